"""What a run reads, checked before any MLflow run is created: a bad path or a malformed file is
one named error, not a failed run."""

from __future__ import annotations

from pathlib import Path

from tempo_bench.policy.model import ModelLoadError, check_model, resolve_model_path
from tempo_bench.tasks import load_task_data


def check_inputs(config) -> None:
    """Every checkpoint and file a run config names can be read: the policy's model, a critic to
    start from (``critic.init``) and the task's questions (a malformed file is a DataError naming
    file and line). Called before any run is created."""
    load_task_data(config.task)
    check_model(config.model.path)
    if config.critic.path is not None:
        check_model(config.critic.path)
    if config.critic.init is not None:
        try:
            folder = Path(resolve_model_path(config.critic.init, part="critic"))
        except FileNotFoundError as err:
            raise ModelLoadError(str(err)) from None
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"critic.init={config.critic.init!r}: no saved critic in {folder} "
                                 "(config.json missing); use 'toy-rlvr', a folder a critic was saved to, or null")
