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

from tempo_bench.core.errors import Interrupted
from tempo_bench.core.loggers import default_tracking_uri
from tempo_bench.core.processes import stop_processes
from tempo_bench.core.tracking import check_tracking, ensure_writable, tracking_client
from tempo_bench.experiments.sweep.spec import (
    ObjectiveSpec,
    ParamSpec,
    SweepSpec,
    check_trial_count,
    grid_points,
    load_spec,
    objective_value,
    trial_config,
)
from tempo_bench.experiments.sweep.study import (
    count_finished,
    fail_dead_trials,
    make_storage,
    missing,
    open_study,
    plan_trials,
    trial_params,
    worker_gone,
)
from tempo_bench.experiments.sweep.worker import (
    _worker_entry,
    parent_run_id,
    run_worker,
)
from tempo_bench.run.inputs import check_inputs, check_rollout
from tempo_bench.run.memory_plan import check_plan

__all__ = ["ObjectiveSpec", "ParamSpec", "SweepSpec", "count_finished", "describe", "grid_points", "load_spec",
           "make_storage", "missing", "objective_value", "open_study", "plan_trials", "run_sweep", "trial_config",
           "worker_gone"]


def run_sweep(spec_path: str, study_name: str | None, storage_url: str | None, n_trials: int | None,
              workers: int, tracking_uri: str | None, out_dir: str, progress: bool = True,
              command: str | None = None):
    """Create (or join) the study, mark trials of dead workers interrupted, queue what the sweep
    still owes, run ``workers`` processes, and report. Returns (study, lines saying what is
    missing: empty when every promised trial finished). Ctrl-C marks the running trials and the
    parent run interrupted and raises Interrupted with the command that continues the sweep."""
    import multiprocessing as mp

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec = load_spec(spec_path)
    study_name = study_name or spec.study
    n_trials = n_trials or spec.n_trials
    check_trial_count(spec, n_trials, f"--n-trials {n_trials} with {spec_path}")

    base_config = trial_config(spec, {})
    check_inputs(base_config)  # a missing model or a malformed task file: before any trial
    check_plan(base_config)  # and a trial that cannot fit its GPU
    check_rollout(base_config)  # or a rollout backend that cannot serve the model
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
        note = ("interrupted" if "interrupted" in t.user_attrs else "error" if "error" in t.user_attrs
                else f"queued twice: trial {t.user_attrs['duplicate_of']} runs it" if "duplicate_of" in t.user_attrs
                else "")
        note += f" (retry of {t.user_attrs['retry_of']})" if "retry_of" in t.user_attrs else ""
        lines.append(f"  trial {t.number:>3}  {t.state.name:<9} {value:>8}  {trial_params(t)}  {note}".rstrip())
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    if done:
        lines.append(f"best: trial {study.best_trial.number} value {study.best_value:.4f} params {study.best_params}")
    return "\n".join(lines)
