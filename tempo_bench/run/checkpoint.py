"""Run checkpoints: everything a run needs to continue exactly where it stopped.

A checkpoint is a folder ``<run>/checkpoints/step_NNNNNN/`` with the policy adapter and the policy
optimiser's state (train.mode=full: both in ``policy/``, a torch.distributed.checkpoint that any
number of ranks can read; every rank of a sharded policy writes its shards), the critic and its optimiser (critic methods), and ``state.json`` (step, MLflow
run id, counters, the method's own state, the metrics so far). Each run's sampling is reseeded
per step from (seed, step), so no RNG state needs saving. A checkpoint is written to a temporary
folder and renamed into place; ``latest`` is replaced atomically after it: a kill at any moment
leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from contextlib import contextmanager
from pathlib import Path

import torch

from tempo_bench.config import flatten
from tempo_bench.core.effects import fixed_for_resume, resumable_settings
from tempo_bench.core.errors import ConfigError
from tempo_bench.core.seeds import SEEDING
from tempo_bench.policy.model import is_lora, save_adapter
from tempo_bench.policy.sharding import export_full, restore_full, save_full

KEEP = 2  # checkpoints kept per run


def save_checkpoint(run_dir: Path, step: int, policy, optimizer, critic, state: dict, ranks=None) -> Path | None:
    """Write the checkpoint of ``step`` (rank 0; with a sharded policy every rank calls this and
    writes its shards, rank 0 the rest). Returns its folder (None on the other ranks)."""
    main = ranks is None or ranks.main
    root = run_dir / "checkpoints"
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp_step_{step:06d}"
    if main:
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    if is_lora(policy):
        save_adapter(policy, tmp / "adapter")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    else:
        if ranks is not None:
            ranks.barrier()  # the folder exists before any rank writes into it
        save_full(policy, optimizer, tmp / "policy")  # returns on every rank once all shards are written
    if critic is not None:
        critic.save(tmp / "critic", main)  # a sharded critic: gathered on every rank, written by rank 0
    if not main:
        return None
    (tmp / "state.json").write_text(json.dumps({**state, "step": step, "seeding": SEEDING}))
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    pointer = root / ".latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / "latest")
    for old in sorted(p for p in root.glob("step_*") if p != final)[:-(KEEP - 1) or None]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint of a run folder that can be loaded, or None. Newer ones a full disk or
    a kill left damaged are passed over (set_aside_damaged moves them out of the way)."""
    if not (run_dir / "checkpoints" / "latest").is_file():
        return None
    return next((path for path in _newest_first(run_dir) if damage(path) is None), None)


def _newest_first(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "checkpoints").glob("step_*"), reverse=True)


def damage(path: Path) -> str | None:
    """Why the checkpoint at ``path`` cannot be loaded (a missing or truncated file), or None. Reads
    headers only: state.json parses, every safetensors file's header fits the file, the optimizer
    state is a complete torch (zip) file."""
    import zipfile

    from safetensors import safe_open

    try:
        json.loads((path / "state.json").read_text())
    except (OSError, ValueError) as err:
        return f"state.json: {err}"
    full = (path / "policy").is_dir()
    if full and not (path / "policy" / ".metadata").is_file():  # written last, by rank 0
        return "policy/.metadata: missing (the policy's shards were not all written)"
    adapter = [] if full else [path / "adapter" / "adapter_model.safetensors"]
    for tensors in [*adapter, *sorted(path.glob("critic/**/*.safetensors"))]:
        try:
            with safe_open(str(tensors), framework="pt"):
                pass
        except Exception as err:  # noqa: BLE001 (safetensors raises its own and OS errors)
            return f"{tensors.relative_to(path)}: {err}"
    if not full and not zipfile.is_zipfile(path / "optimizer.pt"):
        return "optimizer.pt: missing or truncated"
    return None


def set_aside_damaged(run_dir: Path) -> list[str]:
    """Rename the damaged checkpoints newer than the latest loadable one to ``damaged_step_N``
    (kept for inspection, never loaded) and point ``latest`` at the loadable one; prints a
    one-line warning for each and returns them."""
    usable = latest_checkpoint(run_dir)
    notes = []
    for path in _newest_first(run_dir):
        if path == usable:
            break
        why = damage(path)
        os.replace(path, path.with_name(f"damaged_{path.name}"))
        notes.append(f"checkpoint {path} cannot be loaded ({why}); set aside as damaged_{path.name}"
                     + (f", resuming from {usable.name}" if usable else ""))
    if usable is not None and notes:
        (run_dir / "checkpoints" / "latest").write_text(usable.name)
    for note in notes:
        print(f"warning: {note}", file=sys.stderr)
    return notes


def load_state(path: Path) -> dict:
    return json.loads((path / "state.json").read_text())


def restore_policy(path: Path, policy, optimizer) -> None:
    """The policy and its optimiser as the checkpoint at ``path`` holds them."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    if (path / "policy").is_dir():
        restore_full(policy, optimizer, path / "policy")
        return
    set_peft_model_state_dict(policy, load_file(str(path / "adapter" / "adapter_model.safetensors")))
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))


@contextmanager
def hold_run_folder(run_dir: Path):
    """One process per run: an exclusive lock on the run folder while a process trains it (the OS
    drops it when the process dies, so a kill leaves nothing to clean). A second process on the same
    run, ``--resume`` included, is a ConfigError naming the first: both would write one MLflow run
    and one checkpoint folder, and log every remaining step twice."""
    from filelock import FileLock, Timeout

    run_dir.mkdir(parents=True, exist_ok=True)
    lock, owner = FileLock(str(run_dir / ".run.lock")), run_dir / ".run.owner"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = owner.read_text().strip() if owner.is_file() else "another process"
        raise ConfigError(f"run folder {run_dir} is in use by {holder}: wait for it to end or stop it, then "
                          "resume") from None
    try:
        owner.write_text(f"process {os.getpid()} on {socket.gethostname()}")
        yield
    finally:
        lock.release()


def check_run_folder_free(run_dir: Path) -> None:
    """The ConfigError of hold_run_folder, now, without holding the folder."""
    with hold_run_folder(run_dir):
        pass


def run_folder(root: Path, run_name: str, run_id: str) -> Path:
    """Where an attempt of a run keeps its checkpoints, under ``root`` (<out>/<experiment>): named
    by the run and its MLflow run id's first 8 characters."""
    return root / f"{run_name}-{run_id[:8]}"


def run_folders(root: Path, run_name: str) -> list[Path]:
    """Every attempt's folder of ``run_name`` under ``root`` (<out>/<experiment>)."""
    return [d for d in root.glob(f"{run_name}-*") if d.is_dir()]


def find_resumable(out: Path, experiment: str, run_name: str) -> Path | None:
    """The most recently checkpointed run folder of ``run_name`` in ``experiment``."""
    candidates = [d for d in run_folders(out / experiment, run_name) if latest_checkpoint(d) is not None]
    return max(candidates, key=lambda d: (d / "checkpoints" / "latest").stat().st_mtime) if candidates else None


def check_resumable(path: Path, config) -> dict:
    """The checkpoint's state, after checking that ``config`` matches the one it was made with."""
    state = load_state(path)
    if state.get("seeding", 1) != SEEDING:
        raise ConfigError(f"cannot resume {path.parent.parent}: its checkpoint was made with seeding scheme "
                          f"{state.get('seeding', 1)} and this version seeds with scheme {SEEDING} (a resumed "
                          "run would mix both); start the run again")
    saved, current = flatten(state["config"]), flatten(config.model_dump())
    # a field added to the config after the checkpoint was made is unchanged if it holds its default
    try:
        defaults = flatten(type(config).model_validate(state["config"]).model_dump())
    except ValueError:  # a field since removed: reported as a difference below
        defaults = {}
    saved = {**{k: v for k, v in defaults.items() if k not in saved}, **saved}
    # what a resume may change is kept on each field (tempo_bench/core/effects.py)
    changed = sorted(k for k in set(saved) | set(current)
                     if saved.get(k) != current.get(k) and fixed_for_resume(config, k))
    if changed:
        raise ConfigError(f"cannot resume {path.parent.parent}: the config differs in {', '.join(changed)} "
                          f"(only {', '.join(resumable_settings(config))} may change)")
    _check_critic_layout(path, state, config)
    return state


def _check_critic_layout(path: Path, state: dict, config) -> None:
    """The checkpoint's critic loads only into the layout it was saved in (critic.share_base may
    change where it resolves to that layout: a checkpoint from before the setting existed)."""
    from tempo_bench.methods.catalog import method_class

    if not method_class(config.method).uses_critic:
        return
    saved, layout = state.get("critic_layout") or "own base", config.critic_layout()  # (none before 2026-12-03)
    if saved != layout:
        raise ConfigError(f"cannot resume {path.parent.parent}: its critic was saved with its {saved}, this config "
                          f"gives it a {layout}; add --set critic.share_base={str(saved == 'shared base').lower()}")


def export_policy(policy, out_dir: Path, main: bool = True) -> Path:
    """The trained policy as the run's artefact: its LoRA adapter (``adapter/``), or every weight as
    a standard checkpoint folder (``model/``, gathered from the shards of a sharded policy: every
    rank calls this then, rank 0 writes)."""
    if is_lora(policy):
        return save_adapter(policy, out_dir / "adapter")
    return export_full(policy, out_dir / "model", main)
