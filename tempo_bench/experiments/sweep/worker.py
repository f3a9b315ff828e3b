"""A sweep worker: trials claimed from the queue (or sampled), each one run logged to MLflow as a
nested run of the study's parent, its end state told to the study."""

from __future__ import annotations

import os
import socket
import sys
import time
import traceback
from pathlib import Path

import numpy as np

from tempo_bench.core.loggers import MLflowLogger, ensure_experiment
from tempo_bench.core.processes import ParentWatch, init_worker, interruptible_run
from tempo_bench.core.tracking import store_lock, tracking_client
from tempo_bench.experiments.sweep.spec import (
    SweepSpec,
    load_spec,
    objective_value,
    suggest,
    trial_config,
)
from tempo_bench.experiments.sweep.study import (
    count_finished,
    drawn_before,
    make_storage,
    open_study,
    queued_twice,
    trial_params,
)
from tempo_bench.run.caches import RunCaches
from tempo_bench.run.run import run_ttt

MAX_REDRAWS = 50  # draws in a row of points other trials hold before a worker calls the space exhausted


def parent_run_id(tracking_uri: str, experiment: str, study_name: str, artifact_root: Path) -> str:
    """The study's parent run, created by the first process that asks and found by the others."""
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
                   watch_parent: bool = False, caches: RunCaches | None = None):
    """The Optuna objective: one run per seed of the spec, each trial's runs sharing ``caches``
    (what does not depend on the trial's parameters is loaded or computed once per worker)."""
    caches = caches if caches is not None else RunCaches()
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
                                     progress=progress, on_step=hook, caches=caches)
                else:
                    with MLflowLogger(tracking_uri, experiment, f"trial-{trial.number}-s{seed}", artifact_root,
                                      tags={"mlflow.parentRunId": trial_logger.run_id}) as seed_logger:
                        result = run_ttt(config, seed_logger, out_dir=out_dir / study_name / f"trial-{trial.number}-s{seed}",
                                         progress=progress, on_step=hook, caches=caches)
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


def claim_queued(study, spec: SweepSpec):
    """The next queued (WAITING) trial, claimed atomically for this worker, or None. Unlike
    ``study.ask()`` this never samples a new trial when the queue is empty, so a grid sweep never
    runs a point twice when two workers reach the end of the queue together; a trial queued twice
    (two coordinators planning at once) is marked FAIL with ``duplicate_of`` and skipped."""
    import optuna
    from optuna.trial import TrialState

    for frozen in study._storage.get_all_trials(study._study_id, deepcopy=False, states=(TrialState.WAITING,)):
        try:
            if not study._storage.set_trial_state_values(frozen._trial_id, state=TrialState.RUNNING):
                continue
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        owner = queued_twice(study, study._storage.get_trial(frozen._trial_id), spec)
        if owner is None:
            return optuna.trial.Trial(study, frozen._trial_id)
        study._storage.set_trial_user_attr(frozen._trial_id, "duplicate_of", owner)
        study._storage.set_trial_state_values(frozen._trial_id, state=TrialState.FAIL)
        print(f"trial {frozen.number} skipped: queued twice, trial {owner} runs {trial_params(frozen)}")
    return None


def run_trial(study, trial, objective) -> str:
    """Run one claimed trial and record its end state in the study; interruptions propagate."""
    import optuna
    from optuna.trial import TrialState

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
    errors, redrawn = 0, 0
    while errors < spec.max_failed_trials:
        trial = claim_queued(study, spec)
        if trial is None:
            running = len(study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))
            if spec.sampler.name == "grid" or count_finished(study) + running >= n_trials:
                return
            trial = study.ask()
            owner = drawn_before(study, trial.number, suggest(trial, spec))
            if owner is not None:  # a point another trial holds: not trained twice, drawn again
                study._storage.set_trial_user_attr(trial._trial_id, "duplicate_of", owner)
                study.tell(trial, state=TrialState.FAIL)
                redrawn += 1
                if redrawn >= MAX_REDRAWS:
                    print(f"worker {os.getpid()}: {redrawn} draws in a row gave points other trials hold; "
                          "the search space looks exhausted")
                    return
                continue
            redrawn = 0
        errors += run_trial(study, trial, objective) == "FAIL"
    print(f"worker {os.getpid()}: stopping after {errors} failed trials (max_failed_trials)")


def _worker_entry(args):
    init_worker()
    try:
        run_worker(*args, watch_parent=True)
    except KeyboardInterrupt:  # the trial is recorded as interrupted; the coordinator reports it
        sys.exit(130)
