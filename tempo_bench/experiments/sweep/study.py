"""The study: its storage, and the bookkeeping that makes a sweep finish what it promises after
any interruption (which trials are done, which were interrupted, what is still owed)."""

from __future__ import annotations

import socket
import time
from pathlib import Path
from typing import Any

from tempo_bench.core.errors import ConfigError, StorageError
from tempo_bench.core.processes import process_alive
from tempo_bench.core.tracking import (
    check_database,
    ensure_writable,
    redact,
    sqlite_path,
    tracking_client,
)
from tempo_bench.experiments.sweep.spec import SweepSpec, grid_points


def make_storage(url: str | None, sweep_dir: Path):
    """The study's Optuna storage: a journal file in ``sweep_dir``, or an RDB URL. A folder that
    cannot be written or a database that does not answer within 10 s is a StorageError naming it."""
    import optuna

    if url is None:
        from optuna.storages.journal import JournalFileBackend

        ensure_writable(sweep_dir, "sweep folder")
        return optuna.storages.JournalStorage(JournalFileBackend(str(sweep_dir / "optuna.journal")))
    if not url.startswith(("sqlite", "postgresql", "mysql")):
        raise ConfigError(f"--storage {url!r}: give a sqlite:// or postgresql:// URL, or omit it for a journal file")
    from optuna.storages import RDBStorage

    path = sqlite_path(url)
    if path is not None:
        ensure_writable(path.parent, "folder of the Optuna storage")
    check_database(url, what="Optuna storage")
    connect = {"connect_args": {"connect_timeout": 10}} if url.startswith(("postgresql", "mysql")) else {}
    try:
        return RDBStorage(url, engine_kwargs=connect)
    except Exception as err:  # schema creation or version check
        raise StorageError(f"the Optuna storage at {redact(url)} cannot be opened: {err}") from None


def trial_seed(study_seed: int, number: int) -> int:
    """The sampler's seed for trial ``number`` of a study seeded ``study_seed``: draws depend on
    the trial's number, which the storage hands out once, not on the worker or the rerun."""
    import numpy as np

    return int(np.random.SeedSequence([study_seed, number]).generate_state(1)[0])


def _sampler(spec: SweepSpec):
    """The study's sampler. Seeded, it is reseeded per trial (trial_seed): every worker and every
    rerun builds one with the same seed, and a sampler seeded once would draw the same sequence in
    each of them, training each point once per worker and replaying it after an interruption."""
    import optuna

    class PerTrialSeeds:
        def before_trial(self, study, trial):
            if spec.sampler.seed is not None:
                seed = trial_seed(spec.sampler.seed, trial.number)
                for owner in (self, getattr(self, "_random_sampler", None)):  # TPE draws its first trials at random
                    if owner is not None:
                        owner._rng.rng.seed(seed)
            super().before_trial(study, trial)

    if spec.sampler.name == "tpe":
        return type("TrialSeededTPE", (PerTrialSeeds, optuna.samplers.TPESampler), {})(seed=spec.sampler.seed)
    # grid: every point is enqueued (see plan_trials), the sampler is never asked for a value
    return type("TrialSeededRandom", (PerTrialSeeds, optuna.samplers.RandomSampler), {})(seed=spec.sampler.seed)


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


def trial_params(trial) -> dict[str, Any]:
    """A trial's parameters: suggested ones, or for a queued trial the ones it will take."""
    return trial.params or trial.system_attrs.get("fixed_params", {})


def worker_gone(trial, stale_after_s: float, now: float | None = None) -> str | None:
    """Why a RUNNING trial's worker is gone (None while it is alive): its process on this machine
    no longer exists, or it has written no heartbeat for ``stale_after_s``."""
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
        pending = {_key(trial_params(t)) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
        for point in grid_points(spec)[:n_trials]:
            key = _key(point)
            if key in finished or key in pending:
                continue
            earlier = [t.number for t in trials if t.state == TrialState.FAIL and _key(t.params) == key
                       and not _duplicate(t)]
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


def _duplicate(trial) -> bool:
    """A queued copy that was skipped (queued_twice): it stands for no point and no failure."""
    return "duplicate_of" in trial.user_attrs


def queued_twice(study, claimed, spec: SweepSpec) -> int | None:
    """The number of an earlier trial that already owns what ``claimed`` (just taken from the
    queue) would run, or None. Two coordinators that plan one study at the same moment both queue
    its missing grid points (or the same retry), so the queue holds each twice; claiming is atomic,
    so the later copy is recognised here and not run. An earlier trial owns the grid point (or
    the retried trial) while it waits, runs or has finished; a failed one does not."""
    from optuna.trial import TrialState

    def slot(t):
        return _key(trial_params(t)) if spec.sampler.name == "grid" else t.user_attrs.get("retry_of")

    if slot(claimed) is None:  # a trial the sampler drew: nobody else can hold it
        return None
    owning = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    earlier = [t.number for t in study.get_trials(deepcopy=False, states=owning)
               if t.number < claimed.number and slot(t) == slot(claimed)]
    return min(earlier, default=None)


def drawn_before(study, number: int, params: dict[str, Any]) -> int | None:
    """The number of an earlier trial (waiting, running or finished) with the parameters trial
    ``number`` just drew, or None. A sampler may draw a point again (a small categorical space, a
    TPE that trusts its best point, two workers drawing at the same moment); the earlier trial owns
    the point and the later draw is not trained."""
    from optuna.trial import TrialState

    owning = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE, TrialState.PRUNED)
    earlier = [t.number for t in study.get_trials(deepcopy=False, states=owning)
               if t.number < number and _key(trial_params(t)) == _key(params)]
    return min(earlier, default=None)


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
        if _duplicate(t):
            return f"trial {t.number} was queued twice (trial {t.user_attrs['duplicate_of']} runs it)"
        return f"trial {t.number} is {t.state.name}"

    if spec.sampler.name == "grid":
        done = {_key(t.params) for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
        lines = []
        for point in grid_points(spec)[:n_trials]:
            if _key(point) not in done:
                last = [t for t in trials if _key(trial_params(t)) == _key(point) and not _duplicate(t)]
                lines.append(f"point {point}: " + (why(last[-1]) if last else "never run"))
        return lines
    gap = n_trials - count_finished(study)
    if gap <= 0:
        return []
    failed = [why(t) for t in trials if t.state not in (TrialState.COMPLETE, TrialState.PRUNED) and not _duplicate(t)]
    return [f"{gap} of {n_trials} trials not finished"] + failed[-max(gap, 3):]
