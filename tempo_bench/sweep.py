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
import sys
import time
import traceback
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tempo_bench.config import ConfigError, format_errors, load_config, parse_yaml
from tempo_bench.errors import Interrupted, StorageError


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
    name: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="grid: every point of the categorical space exactly once, in the order listed")
    seed: int = Field(0, description="seed of the tpe and random samplers")


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
    stale_after_s: float = Field(300.0, gt=0, description="a RUNNING trial silent this long (or whose worker "
                                 "process on this machine is gone) is marked interrupted and run again")
    max_failed_trials: int = Field(3, ge=1, description="a worker stops after this many trials that raised an "
                                   "error (not interruptions) in one invocation")


def load_spec(path: str | Path) -> SweepSpec:
    """A validated sweep spec. Every corner of the space must make a valid run config, a grid
    must hold ``n_trials`` points, and the objective must be a metric a run of the spec logs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec {path} does not exist")
    data = parse_yaml(path.read_text(), str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"sweep spec {path} must be a YAML mapping")
    try:
        spec = SweepSpec(**data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, model=SweepSpec).replace("invalid config", f"invalid sweep spec {path}")) from None
    for name, param in spec.space.items():
        values = param.choices if param.type == "categorical" else [param.low, param.high]
        for value in values:
            value = int(value) if param.type == "int" else value
            trial_config(spec, {name: value})
    if spec.sampler.name == "grid":
        if any(p.type != "categorical" for p in spec.space.values()):
            raise ConfigError(f"sweep spec {path}: the grid sampler needs every parameter to be categorical")
        size = len(grid_points(spec))
        if spec.n_trials > size:
            raise ConfigError(f"sweep spec {path}: n_trials={spec.n_trials} but the grid has {size} points")
    check_objective(spec, path)
    return spec


def check_objective(spec: SweepSpec, where: str | Path) -> None:
    """The objective must be an evaluation metric a run of this spec logs (the objective reads
    the run's evaluations), or every trial would run to its end and then fail."""
    from tempo_bench.evaluation import eval_metric_names

    logged = eval_metric_names(trial_config(spec, {}).eval)
    if spec.objective.metric not in logged:
        raise ConfigError(f"sweep spec {where}: objective.metric {spec.objective.metric!r} is not an evaluation "
                          f"metric a run of this spec logs; choose one of: {', '.join(sorted(logged))}")


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every point of a categorical grid, in the order the spec lists the choices."""
    import itertools

    names = list(spec.space)
    return [dict(zip(names, values)) for values in itertools.product(*(spec.space[n].choices for n in names))]


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
    """The study's Optuna storage: a journal file in ``sweep_dir``, or an RDB URL. A folder that
    cannot be written or a database that does not answer within 10 s is a StorageError naming it."""
    import optuna

    if url is None:
        from optuna.storages.journal import JournalFileBackend

        from tempo_bench.tracking import ensure_writable

        ensure_writable(sweep_dir, "sweep folder")
        return optuna.storages.JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal")))
    if not url.startswith(("sqlite", "postgresql", "mysql")):
        raise ConfigError(f"--storage {url!r}: give a sqlite:// or postgresql:// URL, or omit it for a journal file")
    from optuna.storages import RDBStorage

    from tempo_bench.tracking import check_database, redact, sqlite_path

    path = sqlite_path(url)
    if path is not None:
        from tempo_bench.tracking import ensure_writable

        ensure_writable(path.parent, "folder of the Optuna storage")
    check_database(url, what="Optuna storage")
    connect = {"connect_args": {"connect_timeout": 10}} if url.startswith(("postgresql", "mysql")) else {}
    try:
        return RDBStorage(url, engine_kwargs=connect)
    except Exception as err:  # schema creation or version check
        raise StorageError(f"the Optuna storage at {redact(url)} cannot be opened: {err}") from None


def _sampler(spec: SweepSpec):
    import optuna

    if spec.sampler.name == "tpe":
        return optuna.samplers.TPESampler(seed=spec.sampler.seed)
    # grid: every point is enqueued (see plan_trials), the sampler is never asked for a value
    return optuna.samplers.RandomSampler(seed=spec.sampler.seed)


def _pruner(spec: SweepSpec):
    import optuna

    if spec.pruner.name == "none":
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(spec.pruner.n_startup_trials, spec.pruner.n_warmup_steps)


def open_study(spec: SweepSpec, name: str, storage):
    import optuna

    return optuna.create_study(study_name=name, storage=storage, direction=spec.objective.direction,
                               sampler=_sampler(spec), pruner=_pruner(spec), load_if_exists=True)


# -- what is done, what was interrupted, what is left ---------------------------------------------


def _key(params: dict[str, Any]) -> str:
    import json

    return json.dumps(params, sort_keys=True, default=str)


def _params(trial) -> dict[str, Any]:
    """A trial's parameters: suggested ones, or for a queued trial the ones it will take."""
    return trial.params or trial.system_attrs.get("fixed_params", {})


def worker_gone(trial, stale_after_s: float, now: float | None = None) -> str | None:
    """Why a RUNNING trial's worker is gone (None while it is alive): its process on this machine
    no longer exists, or it has written no heartbeat for ``stale_after_s``."""
    from tempo_bench.workers import process_alive

    now = time.time() if now is None else now
    host, _, pid = str(trial.user_attrs.get("worker", "")).rpartition(":")
    if host == socket.gethostname() and pid.isdigit() and not process_alive(int(pid)):
        return f"its worker process {pid} is gone"
    beat = trial.user_attrs.get("heartbeat", trial.datetime_start.timestamp() if trial.datetime_start else now)
    if now - beat > stale_after_s:
        return f"no heartbeat for {now - beat:.0f} s"
    return None


def fail_dead_trials(study, stale_after_s: float, tracking_uri: str) -> list[tuple[int, str]]:
    """Mark RUNNING trials whose worker is gone as interrupted and FAIL, and their MLflow runs
    (the trial's and its per-seed ones) KILLED; returns (number, why)."""
    from optuna.trial import TrialState

    from tempo_bench.tracking import tracking_client

    out = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        why = worker_gone(t, stale_after_s)
        if why is None:
            continue
        study._storage.set_trial_user_attr(t._trial_id, "interrupted", why)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id:
            from mlflow.exceptions import MlflowException

            client = tracking_client(tracking_uri)
            try:
                run = client.get_run(run_id)
            except MlflowException:  # logged to another tracking store than this invocation's
                out.append((t.number, why))
                continue
            children = client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{run_id}'")
            for r in [run, *children]:
                if r.info.status == "RUNNING":
                    client.set_tag(r.info.run_id, "trial_state", "KILLED")
                    client.set_terminated(r.info.run_id, "KILLED")
        out.append((t.number, why))
    return out


def plan_trials(study, spec: SweepSpec, n_trials: int) -> list[str]:
    """Make the queue hold exactly what the sweep still owes, and say so in lines to print.

    Grid: every one of the first ``n_trials`` points without a COMPLETE or PRUNED trial, not
    queued and not running, is queued (a failed or interrupted point runs again: Optuna's own grid
    sampler counts a failed point as visited and would never revisit it). Other samplers: every
    interrupted trial (Ctrl-C, SIGTERM, a dead worker) not yet retried is queued with the same
    parameters; trials that failed with an error are not retried (new samples take their place)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    lines = []
    for t in trials:
        if t.state == TrialState.FAIL and "interrupted" in t.user_attrs:
            lines.append(f"trial {t.number} {t.params} was interrupted ({t.user_attrs['interrupted']})")
    if spec.sampler.name == "grid":
        finished = {_key(t.params) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
        pending = {_key(_params(t)) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
        for point in grid_points(spec)[:n_trials]:
            key = _key(point)
            if key in finished or key in pending:
                continue
            earlier = [t.number for t in trials if t.state == TrialState.FAIL and _key(t.params) == key]
            study.enqueue_trial(point, user_attrs={"retry_of": earlier[-1]} if earlier else {}, skip_if_exists=False)
            if earlier:
                lines.append(f"point {point} runs again (its last trial, {earlier[-1]}, did not complete)")
        return lines
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state == TrialState.FAIL and "interrupted" in t.user_attrs and t.number not in retried:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
            lines.append(f"trial {t.number} {t.params} runs again")
    return lines


def count_finished(study) -> int:
    from optuna.trial import TrialState

    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def missing(study, spec: SweepSpec, n_trials: int) -> list[str]:
    """Why the study has fewer finished trials than promised, one line per gap (empty: done)."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)

    def why(t) -> str:
        if t.state == TrialState.RUNNING:
            return f"trial {t.number} is still RUNNING on {t.user_attrs.get('worker', '?')}"
        if "error" in t.user_attrs:
            return f"trial {t.number} failed: {t.user_attrs['error'].splitlines()[0][:300]}"
        if "interrupted" in t.user_attrs:
            return f"trial {t.number} was interrupted ({t.user_attrs['interrupted']})"
        return f"trial {t.number} is {t.state.name}"

    if spec.sampler.name == "grid":
        done = {_key(t.params) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
        lines = []
        for point in grid_points(spec)[:n_trials]:
            if _key(point) not in done:
                last = [t for t in trials if _key(_params(t)) == _key(point)]
                lines.append(f"point {point}: " + (why(last[-1]) if last else "never run"))
        return lines
    gap = n_trials - count_finished(study)
    if gap <= 0:
        return []
    failed = [why(t) for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED)]
    return [f"{gap} of {n_trials} trials not finished"] + failed[-max(gap, 3):]


# -- MLflow -------------------------------------------------------------------------------------


def parent_run_id(tracking_uri: str, experiment: str, study_name: str, artifact_root: Path) -> str:
    """The study's parent run, created by the first process that asks and found by the others."""
    from tempo_bench.loggers import ensure_experiment
    from tempo_bench.tracking import store_lock, tracking_client

    client = tracking_client(tracking_uri)
    exp_id = ensure_experiment(client, experiment, artifact_root)
    with store_lock(tracking_uri):  # one parent even when two coordinators start at once
        found = client.search_runs([exp_id], filter_string=f"tags.sweep_parent = '{study_name}'", max_results=1)
        if found:
            return found[0].info.run_id
        return client.create_run(exp_id, run_name=f"study-{study_name}", tags={"sweep_parent": study_name}).info.run_id


# -- the worker ---------------------------------------------------------------------------------


class _Heartbeat:
    """Per-step hook of run_ttt: writes the trial's heartbeat, reports evals to the pruner, and
    (in a spawned worker) stops the trial if the coordinating process was killed."""

    def __init__(self, trial, spec: SweepSpec, report: bool, watch_parent: bool):
        from tempo_bench.workers import ParentWatch

        self.trial, self.spec, self.report = trial, spec, report
        self.parent = ParentWatch() if watch_parent else None

    def __call__(self, step: int, evals: dict[str, float] | None) -> None:
        import optuna

        if self.parent is not None:
            self.parent(step, evals)
        self.trial.set_user_attr("heartbeat", time.time())
        if self.report and evals is not None and self.spec.objective.metric in evals:
            self.trial.report(evals[self.spec.objective.metric], step)
            if self.trial.should_prune():
                raise optuna.TrialPruned(f"pruned at step {step}")


def make_objective(spec: SweepSpec, study_name: str, tracking_uri: str, out_dir: Path, progress: bool,
                   watch_parent: bool = False):
    from tempo_bench.loggers import MLflowLogger
    from tempo_bench.loop import run_ttt

    experiment = f"sweep-{study_name}"
    artifact_root = out_dir / "mlartifacts"

    def objective(trial) -> float:
        import optuna

        params = suggest(trial, spec)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("heartbeat", time.time())
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
                hook = _Heartbeat(trial, spec, report=i == 0, watch_parent=watch_parent)
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
            trial.set_user_attr("error", f"{type(err).__name__}: {err}"[:2000])
            trial_logger.set_tags({"error": f"{type(err).__name__}: {err}"[:5000]})
            trial_logger.log_text(traceback.format_exc(), "error.txt")
            raise
        except BaseException:  # Ctrl-C, SIGTERM from the coordinator, or the coordinator gone
            state = "KILLED"
            trial.set_user_attr("interrupted", "stopped by Ctrl-C or SIGTERM")
            raise
        finally:
            trial_logger.set_tags({"trial_state": state})
            trial_logger.close("FINISHED" if state in ("COMPLETE", "PRUNED") else "FAILED" if state == "FAIL" else "KILLED")

    return objective


def claim_queued(study):
    """The next queued (WAITING) trial, claimed atomically for this worker, or None. Unlike
    ``study.ask()`` this never samples a new trial when the queue is empty, so a grid sweep never
    runs a point twice when two workers reach the end of the queue together."""
    import optuna
    from optuna.trial import TrialState

    for frozen in study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if study._storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                return optuna.trial.Trial(study, frozen._trial_id)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
    return None


def run_trial(study, trial, objective) -> str:
    """Run one claimed trial and record its end state in the study; interruptions propagate."""
    import optuna
    from optuna.trial import TrialState

    from tempo_bench.workers import interruptible_run

    try:
        with interruptible_run():
            value = objective(trial)
    except optuna.TrialPruned:
        study.tell(trial, state=TrialState.PRUNED)
        return "PRUNED"
    except Exception:
        study.tell(trial, state=TrialState.FAIL)
        return "FAIL"
    except BaseException:
        study.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
        raise
    study.tell(trial, value)
    return "COMPLETE"


def run_worker(spec_path: str, study_name: str, storage_url: str | None, n_trials: int,
               tracking_uri: str, out_dir: str, progress: bool = False, watch_parent: bool = False) -> None:
    """One worker: queued trials first, then (samplers other than grid) new ones until the study
    has ``n_trials`` finished or running. Everything a trial loads or computes that does not
    depend on its parameters (base model, tokenizer, data, starting critic, the initial policy's
    evaluation) is cached for the next trial."""
    import optuna
    from optuna.trial import TrialState

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(spec_path)
    out = Path(out_dir)
    study = open_study(spec, study_name, make_storage(storage_url, out / "sweeps" / study_name))
    objective = make_objective(spec, study_name, tracking_uri, out, progress, watch_parent)
    errors = 0
    while errors < spec.max_failed_trials:
        trial = claim_queued(study)
        if trial is None:
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if spec.sampler.name == "grid" or count_finished(study) + running >= n_trials:
                return
            trial = study.ask()
        errors += run_trial(study, trial, objective) == "FAIL"
    print(f"worker {os.getpid()}: stopping after {errors} failed trials (max_failed_trials)")


def _worker_entry(args):
    from tempo_bench.workers import init_worker

    init_worker()
    try:
        run_worker(*args, watch_parent=True)
    except KeyboardInterrupt:  # the trial is recorded as interrupted; the coordinator reports it
        sys.exit(130)


def run_sweep(spec_path: str, study_name: str | None, storage_url: str | None, n_trials: int | None,
              workers: int, tracking_uri: str | None, out_dir: str, progress: bool = True,
              command: str | None = None):
    """Create (or join) the study, mark trials of dead workers interrupted, queue what the sweep
    still owes, run ``workers`` processes, and report. Returns (study, lines saying what is
    missing: empty when every promised trial finished). Ctrl-C marks the running trials and the
    parent run interrupted and raises Interrupted with the command that continues the sweep."""
    import multiprocessing as mp

    import optuna

    from tempo_bench.loggers import default_tracking_uri
    from tempo_bench.tracking import check_tracking, ensure_writable

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(spec_path)
    study_name = study_name or spec.study
    n_trials = n_trials or spec.n_trials
    if spec.sampler.name == "grid" and n_trials > len(grid_points(spec)):
        raise ConfigError(f"--n-trials {n_trials}: the grid of {spec_path} has {len(grid_points(spec))} points")
    out = ensure_writable(out_dir)
    tracking_uri = tracking_uri or default_tracking_uri(out)
    check_tracking(tracking_uri)
    storage = make_storage(storage_url, out / "sweeps" / study_name)
    study = open_study(spec, study_name, storage)  # created once, before any worker starts
    experiment, artifacts = f"sweep-{study_name}", out / "mlartifacts"
    parent = parent_run_id(tracking_uri, experiment, study_name, artifacts)
    for number, why in fail_dead_trials(study, spec.stale_after_s, tracking_uri):
        print(f"trial {number} marked interrupted: {why}")
    notes = plan_trials(study, spec, n_trials)
    print(f"study {study_name!r}: {count_finished(study)}/{n_trials} trials finished; "
          f"storage {storage_url or out / 'sweeps' / study_name / 'optuna.journal'}; MLflow {tracking_uri}")
    for line in notes:
        print(f"  {line}")
    left = missing(study, spec, n_trials)
    if left and count_finished(study) < n_trials:
        print(f"  to run: {'; '.join(left)}" if spec.sampler.name == "grid" else f"  to run: {left[0]}")
    _set_parent(tracking_uri, parent, "RUNNING", "running")
    args = (str(spec_path), study_name, storage_url, n_trials, tracking_uri, str(out))
    try:
        if workers == 1:
            run_worker(*args, progress=progress)
        else:
            ctx = mp.get_context("spawn")
            procs = [ctx.Process(target=_worker_entry, args=(args,)) for _ in range(workers)]
            for p in procs:
                p.start()
            try:
                for p in procs:
                    p.join()
            except KeyboardInterrupt:
                from tempo_bench.workers import stop_processes

                stop_processes([p.pid for p in procs if p.is_alive()])
                raise
    except KeyboardInterrupt:
        study = open_study(spec, study_name, storage)
        done = count_finished(study)
        _set_parent(tracking_uri, parent, "KILLED", f"interrupted with {done}/{n_trials} trials finished")
        raise Interrupted(f"{done}/{n_trials} trials finished and kept; the running trial is marked interrupted "
                          f"and runs again. Continue the sweep: {command or 'the same tempo-bench sweep command'}") from None
    study = open_study(spec, study_name, storage)
    left = missing(study, spec, n_trials)
    _summarise_parent(study, tracking_uri, parent, n_trials, left)
    return study, left


def _set_parent(tracking_uri: str, run_id: str, status: str, state: str) -> None:
    from tempo_bench.tracking import tracking_client

    client = tracking_client(tracking_uri)
    client.set_tag(run_id, "sweep_state", state)
    if status == "RUNNING":
        client.update_run(run_id, status="RUNNING")
    else:
        client.set_terminated(run_id, status)


def _summarise_parent(study, tracking_uri: str, parent: str, n_trials: int, left: list[str]) -> None:
    """Log the study's outcome on its parent run: FINISHED once every promised trial finished,
    FAILED with the reasons otherwise (rerunning the sweep command continues it)."""
    from optuna.trial import TrialState

    from tempo_bench.tracking import tracking_client

    client = tracking_client(tracking_uri)
    states = {s.name.lower(): len(study.get_trials(deepcopy=False, states=(s,))) for s in TrialState}
    for name, count in states.items():
        client.log_metric(parent, f"trials/{name}", count)
    if states["complete"]:
        client.log_metric(parent, "best_value", study.best_value)
        client.set_tag(parent, "best_trial", str(study.best_trial.number))
        client.set_tag(parent, "best_params", str(study.best_params))
    if left:
        _set_parent(tracking_uri, parent, "FAILED", "incomplete: " + "; ".join(left)[:4000])
    else:
        _set_parent(tracking_uri, parent, "FINISHED", f"complete: {count_finished(study)}/{n_trials} trials")


def describe(study) -> str:
    from optuna.trial import TrialState

    lines = []
    for t in study.get_trials(deepcopy=False):
        value = "-" if t.value is None or (isinstance(t.value, float) and math.isnan(t.value)) else f"{t.value:.4f}"
        note = ("interrupted" if "interrupted" in t.user_attrs else "error" if "error" in t.user_attrs else "")
        note += f" (retry of {t.user_attrs['retry_of']})" if "retry_of" in t.user_attrs else ""
        lines.append(f"  trial {t.number:>3}  {t.state.name:<9} {value:>8}  {_params(t)}  {note}".rstrip())
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if done:
        lines.append(f"best: trial {study.best_trial.number} value {study.best_value:.4f} params {study.best_params}")
    return "\n".join(lines)
