"""The tiny logger interface training code talks to, and its MLflow implementation.

Training code never imports mlflow: it calls ``log_params``, ``set_tags``, ``log_metrics``,
``log_text`` and ``close``. :class:`MemoryLogger` keeps everything in memory (tests, notebooks).
"""

from __future__ import annotations

import json
import math
import os
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

# MLflow's limits per log_batch call and per param value.
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_CHARS = 6000


class Logger(ABC):
    run_id: str | None = None

    @abstractmethod
    def log_params(self, params: dict[str, Any]) -> None: ...

    @abstractmethod
    def set_tags(self, tags: dict[str, str]) -> None: ...

    @abstractmethod
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    @abstractmethod
    def log_text(self, text: str, artifact_file: str) -> None:
        """Store ``text`` as an artifact at the relative path ``artifact_file``."""

    def last_step(self) -> int:
        """The last training step this run already holds (-1: none); a resumed run does not
        log those steps again."""
        return -1

    @abstractmethod
    def log_artifacts(self, local_dir: Path, artifact_path: str) -> None:
        """Store the files of ``local_dir`` under ``artifact_path``."""

    def close(self, status: str = "FINISHED") -> None:
        return None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close("FINISHED")
        else:
            self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
        return False


class MemoryLogger(Logger):
    """Keeps params, tags, metric histories and artifacts in dicts (text artifacts by content,
    file artifacts by their local path)."""

    def __init__(self):
        self.params: dict[str, Any] = {}
        self.tags: dict[str, str] = {}
        self.metrics: dict[str, list[tuple[int, float]]] = {}
        self.artifacts: dict[str, str] = {}
        self.status: str | None = None

    def log_params(self, params):
        self.params.update(params)

    def set_tags(self, tags):
        self.tags.update(tags)

    def log_metrics(self, metrics, step):
        for key, value in metrics.items():
            self.metrics.setdefault(key, []).append((step, float(value)))

    def log_text(self, text, artifact_file):
        self.artifacts[artifact_file] = text

    def log_artifacts(self, local_dir, artifact_path):
        for path in sorted(Path(local_dir).rglob("*")):
            if path.is_file():
                self.artifacts[f"{artifact_path}/{path.relative_to(local_dir)}"] = str(path)

    def close(self, status="FINISHED"):
        self.status = status

    def last_step(self) -> int:
        return max((s for s, _ in self.metrics.get("time/step", [])), default=-1)

    def history(self, key: str) -> list[float]:
        return [v for _, v in self.metrics[key]]


def default_tracking_uri(out_dir: Path) -> str:
    """$MLFLOW_TRACKING_URI if set, else a sqlite store under the output folder (never the
    deprecated file store)."""
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    out_dir.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(out_dir / 'mlflow.db').resolve()}"


class MLflowLogger(Logger):
    """Logs to one MLflow run through MlflowClient (no global active-run state)."""

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        artifact_root: Path | None = None,
        tags: dict[str, str] | None = None,
        run_id: str | None = None,
    ):
        """Start a new run named ``run_name``, or with ``run_id`` reopen that run (resume)."""
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.client = MlflowClient(tracking_uri=tracking_uri)
        if run_id is not None:
            run = self.client.get_run(run_id)
            self.experiment_id, self.run_id = run.info.experiment_id, run_id
            self.client.update_run(run_id, status="RUNNING")
            return
        found = self.client.get_experiment_by_name(experiment)
        if found is None:
            location = artifact_root.resolve().as_uri() if artifact_root is not None else None
            # MLflow 3's UI shows an untagged experiment as a GenAI one; ours are training runs.
            experiment_id = self.client.create_experiment(
                experiment, artifact_location=location,
                tags={"mlflow.experimentKind": "custom_model_development"},
            )
        else:
            experiment_id = found.experiment_id
        self.experiment_id = experiment_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags or {})
        self.run_id = run.info.run_id

    def log_params(self, params):
        from mlflow.entities import Param

        items = [Param(k, _param_value(v)) for k, v in params.items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self.client.log_batch(self.run_id, params=items[i : i + _MAX_PARAMS_PER_BATCH])

    def set_tags(self, tags):
        from mlflow.entities import RunTag

        self.client.log_batch(self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_metrics(self, metrics, step):
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        items = [Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), _MAX_METRICS_PER_BATCH):
            self.client.log_batch(self.run_id, metrics=items[i : i + _MAX_METRICS_PER_BATCH])

    def log_text(self, text, artifact_file):
        self.client.log_text(self.run_id, text, artifact_file)

    def log_artifacts(self, local_dir, artifact_path):
        self.client.log_artifacts(self.run_id, str(local_dir), artifact_path)

    def last_step(self):
        history = self.client.get_metric_history(self.run_id, "time/step")
        return max((m.step for m in history), default=-1)

    def close(self, status="FINISHED"):
        self.client.set_terminated(self.run_id, status=status)


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_MAX_PARAM_CHARS]


def finite_or_nan(value: float) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else float("nan")
