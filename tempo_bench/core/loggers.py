"""The tiny logger interface training code talks to, and its MLflow implementation.

Training code never imports mlflow: it calls ``log_params``, ``set_tags``, ``log_metrics``,
``log_text`` and ``close``. :class:`MemoryLogger` keeps everything in memory (tests, notebooks).
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

from tempo_bench.core.tracking import fail_fast_http, store_lock, tracking_client

# MLflow's limits per log_batch call and per param value.
_MAX_METRICS_PER_BATCH = 1000
_MAX_PARAMS_PER_BATCH = 100
_MAX_PARAM_CHARS = 6000
SPOOL = "mlflow_spool.jsonl"  # in a run folder: writes buffered while the tracking server is unreachable


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
            return False
        try:  # the run's own error is what the user needs; a store that cannot take the status
            self.close("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")
        except Exception as err:  # (a full disk) must not replace it with a traceback of its own
            lines = str(err).strip().splitlines() or [type(err).__name__]
            print(f"warning: could not record the run's end in the store: {next((x for x in lines if 'Error' in x), lines[0])}",
                  file=sys.stderr)
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


def ensure_experiment(client, experiment: str, artifact_root: Path | None) -> str:
    """The id of ``experiment``, created if absent. Safe when several processes ask at once: a
    sqlite store is locked meanwhile, and a creation that loses a race reads the winner's id."""
    from mlflow.exceptions import MlflowException

    with store_lock(client.tracking_uri):
        found = client.get_experiment_by_name(experiment)
        if found is not None:
            return found.experiment_id
        location = artifact_root.resolve().as_uri() if artifact_root is not None else None
        try:
            # MLflow 3's UI shows an untagged experiment as a GenAI one; ours are training runs.
            return client.create_experiment(experiment, artifact_location=location,
                                            tags={"mlflow.experimentKind": "custom_model_development"})
        except MlflowException:  # created meanwhile by a process on another machine
            found = client.get_experiment_by_name(experiment)
            if found is None:
                raise
            return found.experiment_id


class MLflowLogger(Logger):
    """Logs to one MLflow run through MlflowClient (no global active-run state).

    Tracking outages do not stop training and lose nothing: a write that fails because the
    server does not answer is queued, in order, in memory and in ``spool_path`` (JSON lines), and
    the queue is sent before the next write once the server is back, at ``close``, or, if the
    process dies first, when a logger with the same ``spool_path`` reopens the run (``--resume``).
    """

    RETRY_AFTER_S = 10.0  # during an outage, try the server again at most this often

    def __init__(
        self,
        tracking_uri: str,
        experiment: str,
        run_name: str,
        artifact_root: Path | None = None,
        tags: dict[str, str] | None = None,
        run_id: str | None = None,
        spool_path: Path | None = None,
    ):
        """Start a new run named ``run_name``, or with ``run_id`` reopen that run (resume)."""
        if tracking_uri.startswith("http"):  # fail fast during an outage instead of retrying for minutes
            fail_fast_http()
        self.tracking_uri = tracking_uri
        self.client = tracking_client(tracking_uri)
        self.pending: list[dict] = []
        self.spool_path = spool_path
        self._next_try = 0.0
        if run_id is not None:
            run = self.client.get_run(run_id)
            self.experiment_id, self.run_id = run.info.experiment_id, run_id
            self.client.update_run(run_id, status="RUNNING")
            if spool_path is not None and spool_path.is_file():
                self.pending = [json.loads(line) for line in spool_path.read_text().splitlines() if line]
                self.flush()
            return
        experiment_id = ensure_experiment(self.client, experiment, artifact_root)
        self.experiment_id = experiment_id
        run = self.client.create_run(experiment_id, run_name=run_name, tags=tags or {})
        self.run_id = run.info.run_id

    # -- writes go through one queue ----------------------------------------------------------
    def _send(self, op: dict) -> None:
        kind = op["op"]
        if kind == "batch":
            from mlflow.entities import Metric, Param, RunTag

            self.client.log_batch(
                self.run_id,
                metrics=[Metric(k, v, ts, step) for k, v, ts, step in op.get("metrics", [])],
                params=[Param(k, v) for k, v in op.get("params", [])],
                tags=[RunTag(k, v) for k, v in op.get("tags", [])],
            )
        elif kind == "text":
            self.client.log_text(self.run_id, op["text"], op["file"])
        elif kind == "artifacts":
            self.client.log_artifacts(self.run_id, op["dir"], op["path"])
        elif kind == "terminate":
            self.client.set_terminated(self.run_id, status=op["status"])

    def _write(self, op: dict) -> None:
        self.flush()
        if self.pending:  # still down: keep the order
            self._queue(op)
            return
        try:
            self._send(op)
        except Exception as err:
            if not _is_outage(err):
                raise
            self._queue(op)
            self._next_try = time.monotonic() + self.RETRY_AFTER_S
            print(f"warning: MLflow at {self.tracking_uri} does not answer; buffering "
                  f"{'in ' + str(self.spool_path) if self.spool_path else 'in memory'} until it is back")

    def _queue(self, op: dict) -> None:
        self.pending.append(op)
        if self.spool_path is not None:
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            with self.spool_path.open("a") as f:
                f.write(json.dumps(op) + "\n")

    def flush(self, force: bool = False) -> bool:
        """Send queued writes in order; True when nothing is left queued."""
        if not self.pending or (not force and time.monotonic() < self._next_try):
            return not self.pending
        while self.pending:
            try:
                self._send(self.pending[0])
            except Exception as err:
                if not _is_outage(err):
                    raise
                self._next_try = time.monotonic() + self.RETRY_AFTER_S
                return False
            self.pending.pop(0)
        if self.spool_path is not None:
            self.spool_path.unlink(missing_ok=True)
        print(f"MLflow at {self.tracking_uri} is back: buffered writes sent")
        return True

    # -- the Logger interface -----------------------------------------------------------------
    def log_params(self, params):
        items = [[k, _param_value(v)] for k, v in params.items()]
        for i in range(0, len(items), _MAX_PARAMS_PER_BATCH):
            self._write({"op": "batch", "params": items[i : i + _MAX_PARAMS_PER_BATCH]})

    def set_tags(self, tags):
        self._write({"op": "batch", "tags": [[k, str(v)] for k, v in tags.items()]})

    def log_metrics(self, metrics, step):
        now = int(time.time() * 1000)
        items = [[k, float(v), now, step] for k, v in metrics.items() if v is not None]
        for i in range(0, len(items), _MAX_METRICS_PER_BATCH):
            self._write({"op": "batch", "metrics": items[i : i + _MAX_METRICS_PER_BATCH]})

    def log_text(self, text, artifact_file):
        self._write({"op": "text", "text": text, "file": artifact_file})

    def log_artifacts(self, local_dir, artifact_path):
        self._write({"op": "artifacts", "dir": str(local_dir), "path": artifact_path})

    def last_step(self):
        self.flush(force=True)
        logged = max((m.step for m in self.client.get_metric_history(self.run_id, "time/step")), default=-1)
        queued = [m[3] for op in self.pending for m in op.get("metrics", []) if m[0] == "time/step"]
        return max([logged, *queued])

    def close(self, status="FINISHED"):
        """Send what is queued (waiting up to a minute for the server) and end the run."""
        self._write({"op": "terminate", "status": status})
        deadline = time.monotonic() + 60
        while self.pending and time.monotonic() < deadline:
            time.sleep(2)
            self.flush(force=True)
        if self.pending:
            print(f"warning: MLflow still does not answer; {len(self.pending)} writes kept in "
                  f"{self.spool_path or 'memory (lost at exit)'}; they are sent when the run is "
                  "resumed (tempo-bench run ... --resume)")


def _is_outage(err: Exception) -> bool:
    """A failure of the connection or of the server, not of the request itself."""
    if isinstance(err, (ConnectionError, TimeoutError)):
        return True
    text = str(err)
    return "failed with exception" in text or any(f"status code {c}" in text or f"Response code {c}" in text
                                                   for c in (502, 503, 504))


def _param_value(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text[:_MAX_PARAM_CHARS]


def finite_or_nan(value: float) -> float:
    return float(value) if value is not None and math.isfinite(float(value)) else float("nan")
