"""What a config setting changes, kept on the setting itself: the one place that answers "which
settings change the numbers?" (read the ``json_schema_extra`` of each field, or of its whole
section, in :mod:`tempo_bench.config.schema`; a field without one changes the numbers). It
lives in core: the critic and run layers build their cache keys from it.

- ``numbers``: what a run computes. Part of the run's identity (two runs of one identity are
  repeats of one experiment) and of every cache key that reads its section.
- ``speed``: how fast, or in which memory layout, the same numbers are computed (to float
  rounding: fused kernels, micro-batches, threads). Not part of the identity; part of cache keys,
  so a cached starting critic or evaluation is the one this run would have computed itself.
- ``nothing``: where and how a run is recorded, planned or reported, never what it computes.

Separately, ``resumable`` says whether a resumed run may change the setting: by default every
setting that does not change the numbers, plus the run's extent (``train.steps``, ``eval.every``,
``train.budget_tokens``), minus what the checkpoint or the tracking store is tied to.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from pydantic import BaseModel

from tempo_bench.core.seeds import SEEDING

NUMBERS, SPEED, NOTHING = "numbers", "speed", "nothing"


def effect(kind: str, resumable: bool | None = None) -> dict:
    """A field's ``json_schema_extra``: what changing it changes, and whether a resumed run may."""
    return {"effect": kind, "resumable": kind != NUMBERS if resumable is None else resumable}


SPEED_ONLY = effect(SPEED)
RECORDING = effect(NOTHING)  # where and how the run is recorded, planned or reported
EXTENT = effect(NUMBERS, resumable=True)  # how long a run goes and how often it measures
TIED = effect(NOTHING, resumable=False)  # computes nothing, but the checkpoint's run is tied to it


def settings(config: BaseModel, prefix: str = "") -> dict[str, tuple[Any, str, bool]]:
    """Every leaf setting of ``config`` as dotted path -> (value, effect, resumable). Sections
    (nested models) are walked; lists and mappings are values."""
    out: dict[str, tuple[Any, str, bool]] = {}
    section = config.model_config.get("json_schema_extra")  # a whole section's effect, if it has one
    for name, info in type(config).model_fields.items():
        value, path = getattr(config, name), f"{prefix}{name}"
        if isinstance(value, BaseModel):
            out.update(settings(value, path + "."))
            continue
        extra = next((e for e in (info.json_schema_extra, section) if isinstance(e, dict)), {})
        dumped = [v.model_dump() if isinstance(v, BaseModel) else v for v in value] if isinstance(value, list) else value
        out[path] = (dumped, extra.get("effect", NUMBERS), extra.get("resumable", False))
    return out


def computed_by(config: BaseModel, *prefixes: str) -> dict[str, Any]:
    """The settings under ``prefixes`` (sections or single paths) that shape what is computed
    (effect numbers or speed): what a cache key of something built from those sections holds."""
    return {path: value for path, (value, kind, _) in settings(config).items()
            if kind != NOTHING and any(path == p or path.startswith(p + ".") for p in prefixes)}


def config_identity(config: BaseModel) -> str:
    """A short hash of every setting that changes a run's numbers, and the seeding scheme: two
    runs with one identity are repeats of one experiment, and the analysis counts only the latest
    finished one."""
    numbers = {path: _canonical(value) for path, (value, kind, _) in settings(config).items() if kind == NUMBERS}
    numbers["seeding"] = SEEDING  # the same settings under another seeding scheme are another experiment
    return hashlib.sha256(json.dumps(numbers, sort_keys=True, default=str).encode()).hexdigest()[:16]


def fixed_for_resume(config: BaseModel, flat_key: str) -> bool:
    """Whether the flattened config key ``flat_key`` (``methods.tempo.recal_interval`` lies
    inside the setting ``methods``) must stay as it was for a run to resume; unknown keys must."""
    known = settings(config)
    parts = flat_key.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in known:
            return not known[".".join(parts[:end])][2]
    return True


def resumable_settings(config: BaseModel) -> list[str]:
    return sorted(path for path, (_, _, resumable) in settings(config).items() if resumable)


def _canonical(value):
    """16 and 16.0 are one setting (a float field keeps an int as given)."""
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value
