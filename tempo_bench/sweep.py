"""Optuna sweeps over any config field, above all TEMPO's recalibration interval K.

A spec (sweeps/*.yaml) names a base preset, fixed overrides, a search space, the objective and
its direction, the trial budget, the sampler, the pruner and the seeds per trial. The study lives
in an Optuna storage: a JournalStorage file in the sweep's folder by default (safe for several
processes on one machine), or any RDB URL (sqlite, postgresql) for workers on several machines.
The same command started again, here or elsewhere with the same storage, joins the same study.

MLflow: one experiment per study, a parent run for the study, a nested run per trial holding its
params, per-step metrics (one seed) or nested per-seed runs (several seeds), the objective, the
trial number and its final state.
"""

from __future__ import annotations

import math
import os
import socket
import time
import traceback
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tempo_bench.config import ConfigError, format_errors, load_config


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Strict):
    type: Literal["categorical", "int", "float"]
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _complete(self):
        if self.type == "categorical" and not self.choices:
            raise ValueError("a categorical parameter needs a non-empty 'choices' list")
        if self.type != "categorical" and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError(f"a {self.type} parameter needs low <= high")
        if self.log and self.type != "categorical" and self.low <= 0:
            raise ValueError("a log-scale parameter needs low > 0")
        return self


class ObjectiveSpec(_Strict):
    metric: str = "eval/mean_at_k"
    mode: Literal["final", "auc"] = Field("final", description="last eval value, or mean area under the eval curve")
    direction: Literal["maximize", "minimize"] = "maximize"


class SamplerSpec(_Strict):
    name: Literal["tpe", "random", "grid"] = "tpe"
    seed: int = 0


class PrunerSpec(_Strict):
    name: Literal["none", "median"] = "median"
    n_startup_trials: int = Field(2, ge=0)
    n_warmup_steps: int = Field(0, ge=0)


class SweepSpec(_Strict):
    preset: str
    study: str = Field(..., description="default study name (--study overrides)")
    overrides: list[str] = Field(default_factory=list, description="fixed KEY=VALUE overrides")
    space: dict[str, ParamSpec]
    objective: ObjectiveSpec = ObjectiveSpec()
    n_trials: int = Field(10, ge=1)
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    seeds: list[int] = Field([0], min_length=1)
    stale_after_s: float = Field(300.0, gt=0, description="a RUNNING trial silent this long is failed and retried")


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec {path} does not exist")
    try:
        spec = SweepSpec(**(yaml.safe_load(path.read_text()) or {}))
    except ValidationError as err:
        raise ConfigError(format_errors(err, model=SweepSpec).replace("invalid config", f"invalid sweep spec {path}")) from None
    # every point of the space must make a valid config: check the corners before any work
    for name, param in spec.space.items():
        values = param.choices if param.type == "categorical" else [param.low, param.high]
        for value in values:
            value = int(value) if param.type == "int" else value
            trial_config(spec, {name: value})
    return spec


def trial_config(spec: SweepSpec, params: dict[str, Any], seed: int | None = None):
    overrides = list(spec.overrides) + [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                                        for k, v in params.items()]
    if seed is not None:
        overrides.append(f"seed={seed}")
    return load_config(spec.preset, overrides)


def suggest(trial, spec: SweepSpec) -> dict[str, Any]:
    out = {}
    for name, p in spec.space.items():
        if p.type == "categorical":
            out[name] = trial.suggest_categorical(name, p.choices)
        elif p.type == "int":
            out[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            out[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
    return out


def objective_value(evals: dict[int, dict[str, float]], spec: ObjectiveSpec) -> float:
    """The final value of the metric, or its area under the curve over steps divided by the step
    range (a mean level that rewards getting there early)."""
    steps = sorted(s for s in evals if spec.metric in evals[s])
    if not steps:
        raise ValueError(f"objective metric {spec.metric!r} was never logged")
    values = [evals[s][spec.metric] for s in steps]
    if spec.mode == "final" or len(steps) == 1:
        return float(values[-1])
    return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))


# -- storage and study ------------------------------------------------------------------------


def make_storage(url: str | None, sweep_dir: Path):
    import optuna

    if url is None:
        sweep_dir.mkdir(parents=True, exist_ok=True)
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal")))
    if url.startswith(("sqlite", "postgresql", "mysql")):
        import inspect

        from optuna.storages import RDBStorage, RetryFailedTrialCallback

        # Optuna >= 4.9 renamed failed_trial_callback
        names = inspect.signature(RDBStorage.__init__).parameters
        key = "heartbeat_stale_trial_callback" if "heartbeat_stale_trial_callback" in names else "failed_trial_callback"
        return RDBStorage(url, heartbeat_interval=30, grace_period=120, **{key: RetryFailedTrialCallback(max_retry=3)})
    raise ConfigError(f"--storage {url!r}: give a sqlite:// or postgresql:// URL, or omit it for a journal file")


def _sampler(spec: SweepSpec):
    import optuna

    if spec.sampler.name == "random":
        return optuna.samplers.RandomSampler(seed=spec.sampler.seed)
    if spec.sampler.name == "grid":
        grid = {k: p.choices for k, p in spec.space.items() if p.type == "categorical"}
        if len(grid) != len(spec.space):
            raise ConfigError("the grid sampler needs every parameter to be categorical")
        return optuna.samplers.GridSampler(grid, seed=spec.sampler.seed)
    return optuna.samplers.TPESampler(seed=spec.sampler.seed)


def _pruner(spec: SweepSpec):
    import optuna

    if spec.pruner.name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(spec.pruner.n_startup_trials, spec.pruner.n_warmup_steps)


def open_study(spec: SweepSpec, name: str, storage):
    import optuna

    return optuna.create_study(study_name=name, storage=storage, direction=spec.objective.direction,
                               sampler=_sampler(spec), pruner=_pruner(spec), load_if_exists=True)


def retry_stale_trials(study, stale_after_s: float) -> list[int]:
    """Fail RUNNING trials whose worker went silent (no heartbeat for ``stale_after_s``) and
    enqueue each again with the same parameters (a grid sampler revisits failed grid points by
    itself, and cannot take enqueued trials). Journal storage has no built-in heartbeat, so
    workers write one as a trial attribute at every step."""
    import optuna
    from optuna.trial import TrialState

    enqueue = not isinstance(study.sampler, optuna.samplers.GridSampler)
    now, retried = time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        beat = t.user_attrs.get("heartbeat", t.datetime_start.timestamp() if t.datetime_start else now)
        if now - beat > stale_after_s:
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            if enqueue:
                study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            retried.append(t.number)
    return retried


def count_finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


# -- MLflow -------------------------------------------------------------------------------------


def parent_run_id(tracking_uri: str, experiment: str, study_name: str, artifact_root: Path) -> str:
    """The study's parent run, created by the first process that asks and found by the others."""
    from mlflow.tracking import MlflowClient

    from tempo_bench.loggers import ensure_experiment

    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = ensure_experiment(client, experiment, artifact_root)
    found = client.search_runs([exp_id], filter_string=f"tags.sweep_parent = '{study_name}'", max_results=1)
    if found:
        return found[0].info.run_id
    run = client.create_run(exp_id, run_name=f"study-{study_name}", tags={"sweep_parent": study_name})
    return run.info.run_id


# -- the worker ---------------------------------------------------------------------------------


class _Heartbeat:
    """Per-step hook of run_ttt: writes the trial's heartbeat, reports evals to the pruner."""

    def __init__(self, trial, spec: SweepSpec, report: bool):
        self.trial, self.spec, self.report = trial, spec, report

    def __call__(self, step: int, evals: dict[str, float] | None) -> None:
        import optuna

        self.trial.set_user_attr("heartbeat", time.time())
        if self.report and evals is not None and self.spec.objective.metric in evals:
            self.trial.report(evals[self.spec.objective.metric], step)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}")


def make_objective(spec: SweepSpec, study_name: str, tracking_uri: str, out_dir: Path, progress: bool):
    from tempo_bench.loggers import MLflowLogger
    from tempo_bench.loop import run_ttt

    experiment = f"sweep-{study_name}"
    artifact_root = out_dir / "mlartifacts"

    def objective(trial) -> float:
        import optuna

        params = suggest(trial, spec)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        parent = parent_run_id(tracking_uri, experiment, study_name, artifact_root)
        trial_logger = MLflowLogger(tracking_uri, experiment, f"trial-{trial.number}", artifact_root,
                                    tags={"mlflow.parentRunId": parent, "trial_number": str(trial.number),
                                          "study": study_name})
        trial_logger.log_params({f"trial.{k}": v for k, v in params.items()})
        trial.set_user_attr("mlflow_run_id", trial_logger.run_id)
        state, values = "COMPLETE", []
        try:
            for i, seed in enumerate(spec.seeds):
                config = trial_config(spec, params, seed)
                hook = _Heartbeat(trial, spec, report=i == 0)
                if len(spec.seeds) == 1:
                    result = run_ttt(config, trial_logger, out_dir=out_dir / study_name / f"trial-{trial.number}",
                                     progress=progress, on_step=hook)
                else:
                    with MLflowLogger(tracking_uri, experiment, f"trial-{trial.number}-s{seed}", artifact_root,
                                      tags={"mlflow.parentRunId": trial_logger.run_id}) as seed_logger:
                        result = run_ttt(config, seed_logger, out_dir=out_dir / study_name / f"trial-{trial.number}-s{seed}",
                                         progress=progress, on_step=hook)
                values.append(objective_value(result.evals, spec.objective))
            value = float(np.mean(values))
            trial_logger.log_metrics({"objective": value}, step=0)
            return value
        except optuna.TrialPruned:
            state = "PRUNED"
            raise
        except Exception as err:
            state = "FAIL"
            trial_logger.set_tags({"error": f"{type(err).__name__}: {err}"[:5000]})
            trial_logger.log_text(traceback.format_exc(), "error.txt")
            raise
        except BaseException:
            state = "KILLED"
            raise
        finally:
            trial_logger.set_tags({"trial_state": state})
            trial_logger.close("FINISHED" if state in ("COMPLETE", "PRUNED") else "FAILED" if state == "FAIL" else "KILLED")

    return objective


def run_worker(spec_path: str, study_name: str, storage_url: str | None, n_trials: int,
               tracking_uri: str, out_dir: str, progress: bool = False) -> None:
    """One worker: run trials of the study until it has ``n_trials`` finished ones. Everything a
    trial loads or computes that does not depend on the trial's parameters (base model, tokenizer,
    data, starting critic, the initial policy's evaluation) is cached for the next trial."""
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(spec_path)
    out = Path(out_dir)
    study = open_study(spec, study_name, make_storage(storage_url, out / "sweeps" / study_name))
    if count_finished(study) >= n_trials:
        return
    study.optimize(
        make_objective(spec, study_name, tracking_uri, out, progress),
        callbacks=[MaxTrialsCallback(n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED))],
        catch=(Exception,),
    )


def _worker_entry(args):
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per worker process
    from tempo_bench.cli import _quiet_libraries

    _quiet_libraries()
    run_worker(*args)


def run_sweep(spec_path: str, study_name: str | None, storage_url: str | None, n_trials: int | None,
              workers: int, tracking_uri: str | None, out_dir: str, progress: bool = True):
    """Create (or join) the study once, fail and re-enqueue stale trials, then run ``workers``
    processes. Returns the study."""
    import multiprocessing as mp

    import optuna

    from tempo_bench.loggers import default_tracking_uri

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(spec_path)
    study_name = study_name or spec.study
    n_trials = n_trials or spec.n_trials
    out = Path(out_dir)
    tracking_uri = tracking_uri or default_tracking_uri(out)
    from tempo_bench.cli import check_tracking

    check_tracking(tracking_uri)
    storage = make_storage(storage_url, out / "sweeps" / study_name)
    study = open_study(spec, study_name, storage)  # created once, before any worker starts
    # the MLflow store, experiment and parent run exist before any worker starts (workers racing to
    # create a new sqlite store collide in its schema migration)
    parent_run_id(tracking_uri, f"sweep-{study_name}", study_name, out / "mlartifacts")
    retried = retry_stale_trials(study, spec.stale_after_s)
    if retried:
        print(f"retrying trials {retried}: they were RUNNING with no heartbeat for {spec.stale_after_s:.0f} s")
    print(f"study {study_name!r}: {count_finished(study)}/{n_trials} trials finished; "
          f"storage {storage_url or out / 'sweeps' / study_name / 'optuna.journal'}; MLflow {tracking_uri}")
    args = (str(spec_path), study_name, storage_url, n_trials, tracking_uri, str(out))
    if workers == 1:
        run_worker(*args, progress=progress)
    else:
        ctx = mp.get_context("spawn")
        procs = [ctx.Process(target=_worker_entry, args=(args,)) for _ in range(workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode]
        if bad:
            print(f"warning: {len(bad)} worker(s) exited with codes {bad}")
    study = open_study(spec, study_name, storage)
    _summarise_parent(study, spec, tracking_uri, f"sweep-{study_name}", out / "mlartifacts", n_trials)
    return study


def _summarise_parent(study, spec: SweepSpec, tracking_uri: str, experiment: str, artifact_root: Path,
                      n_trials: int) -> None:
    """Log the study's outcome on its parent run; close it once the budget is reached."""
    from mlflow.tracking import MlflowClient
    from optuna.trial import TrialState

    client = MlflowClient(tracking_uri=tracking_uri)
    parent = parent_run_id(tracking_uri, experiment, study.study_name, artifact_root)
    states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    for name, count in states.items():
        client.log_metric(parent, f"trials/{name}", count)
    if states["complete"]:
        client.log_metric(parent, "best_value", study.best_value)
        client.set_tag(parent, "best_trial", str(study.best_trial.number))
        client.set_tag(parent, "best_params", str(study.best_params))
    if count_finished(study) >= n_trials:
        client.set_terminated(parent, "FINISHED")


def describe(study) -> str:
    from optuna.trial import TrialState

    lines = []
    for t in study.get_trials(deepcopy=False):
        value = "-" if t.value is None or (isinstance(t.value, float) and math.isnan(t.value)) else f"{t.value:.4f}"
        lines.append(f"  trial {t.number:>3}  {t.state.name:<9} {value:>8}  {t.params}")
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if done:
        lines.append(f"best: trial {study.best_trial.number} value {study.best_value:.4f} params {study.best_params}")
    return "\n".join(lines)
