"""Loading a run configuration: YAML presets (with ``base`` chains), dotted command-line
overrides, and errors that name the field. What each setting changes (a run's identity, its
caches, what a resume may change) is :mod:`tempo_bench.core.effects`."""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tempo_bench.config.schema import RunConfig, format_errors
from tempo_bench.core.errors import ConfigError, DataError
from tempo_bench.core.registry import unknown_name


def preset_names(include_bases: bool = False) -> list[str]:
    """Presets shipped in tempo_bench/presets; names starting with '_' are bases that others
    extend (``base: _paper``), listed only with ``include_bases``."""
    folder = resources.files("tempo_bench") / "presets"
    names = sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))
    return [n for n in names if include_bases or not n.startswith("_")]


def _read_preset(name: str, seen: tuple[str, ...] = ()) -> dict:
    """A preset's mapping, with the preset it names as ``base`` merged underneath it."""
    path = Path(name)
    if path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise ConfigError(f"preset file {name} does not exist")
        text = path.read_text()
    elif name in preset_names(include_bases=True):
        text = (resources.files("tempo_bench") / "presets" / f"{name}.yaml").read_text()
    else:
        raise ConfigError(unknown_name("preset", name, preset_names(), ", or a path to a .yaml file"))
    data = parse_yaml(text, str(path) if path.suffix in {".yaml", ".yml"} else f"preset {name!r}")
    if not isinstance(data, dict):
        raise ConfigError(f"preset {name!r} must be a YAML mapping")
    base = data.pop("base", None)
    if base is None:
        return data
    if base in seen + (name,):
        raise ConfigError(f"preset {name!r}: circular base chain {' -> '.join(seen + (name, base))}")
    return deep_merge(_read_preset(base, seen + (name,)), data)


def parse_yaml(text: str, where: str):
    """YAML text as Python data; a syntax error names the file, the line and the column."""
    try:
        return yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        place = f"{where}:{mark.line + 1}:{mark.column + 1}" if mark is not None else where
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise DataError(f"{place}: not valid YAML ({problem})") from None


def deep_merge(base: dict, override: dict) -> dict:
    """``override`` on top of ``base``, section by section."""
    out = dict(base)
    for key, value in override.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` to nested ``data`` in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {assignment!r} has an empty key")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {part!r} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as err:  # one line, not the parser's dump
        mark = getattr(err, "problem_mark", None)
        where = f" at character {mark.column + 1}" if mark is not None else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"override {assignment!r}: value is not valid YAML ({problem}{where})") from None


def load_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a preset by name (or a .yaml path), apply overrides, validate everything, including
    the options of every method the config mentions."""
    from tempo_bench.methods.catalog import method_names

    data = _read_preset(preset)
    data.setdefault("preset", Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset)
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        config = RunConfig(**data)
    except ValidationError as err:
        raise ConfigError(format_errors(err)) from None

    for name in {config.method, *config.methods}:
        if name not in method_names():
            raise ConfigError(unknown_name("method", name, method_names()))
        config.method_options(name)
    _check_labeled_pool(config)
    return config


def _check_labeled_pool(config: RunConfig) -> None:
    """A method that needs labeled questions must have some left after the critic's probe."""
    from tempo_bench.methods.catalog import method_class

    cls = method_class(config.method)
    try:
        method = cls(config.method_options(), n_train=config.rollout.n)
    except ValueError as err:  # settings that are valid alone but not together
        raise ConfigError(str(err)) from None
    probe = config.critic.probe_questions if cls.uses_critic else 0
    if method.needs_labeled_pool(config.train.prompts_per_step) and config.task.labeled_size <= probe:
        raise ConfigError(
            f"method {config.method!r} needs labeled questions, but task.labeled_size="
            f"{config.task.labeled_size} leaves none after the critic's probe ({probe}); "
            f"raise task.labeled_size"
        )


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values (MLflow params are flat strings)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
