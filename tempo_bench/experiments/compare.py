"""`tempo-bench compare`: several methods x seeds on one preset, into one MLflow experiment, and a
results table with 95% bootstrap confidence intervals over seeds.

Every run shares the task data, the starting actor and (for critic methods) the starting critic;
seeds change only the sampling and update randomness.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass
from pathlib import Path

from tempo_bench.config import RunConfig, config_identity, load_config
from tempo_bench.core.errors import Interrupted, StorageError
from tempo_bench.core.loggers import (
    SPOOL,
    MLflowLogger,
    default_tracking_uri,
    ensure_experiment,
)
from tempo_bench.core.processes import (
    ParentWatch,
    exit_if_terminated,
    init_worker,
    interruptible_run,
    stop_processes,
)
from tempo_bench.core.tracking import check_tracking, ensure_writable, tracking_client
from tempo_bench.experiments.results import (
    Outcome,
    run_history,
    summarise,
    summarise_history,
)
from tempo_bench.methods.catalog import method_names
from tempo_bench.run.caches import RunCaches
from tempo_bench.run.checkpoint import latest_checkpoint, run_folder
from tempo_bench.run.inputs import check_inputs, check_rollout
from tempo_bench.run.memory_plan import check_plan
from tempo_bench.run.provenance import run_name_of
from tempo_bench.run.run import run_ttt


def parse_methods(text: str) -> list[str]:
    if text == "all":
        return method_names()
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in method_names()]
    if not methods:  # `--methods ''` (an empty shell variable) ran the defaults without a word
        raise ValueError(f"--methods names no method; available: {', '.join(method_names())}, or 'all'")
    if unknown:
        raise ValueError(f"unknown methods {unknown}; available: {', '.join(method_names())}, or 'all'")
    return methods


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ValueError("--seeds is empty")
    return seeds


@dataclass
class Job:
    method: str
    seed: int
    config: dict
    identity: str
    resume_run_id: str | None = None  # continue this unfinished run from its checkpoint
    reuse: Outcome | None = None  # a finished run of the same config (compare --resume)


def run_compare(preset: str, methods: list[str], seeds: list[int], overrides: list[str],
                tracking_uri: str | None, out: str | None, experiment: str | None,
                workers: int = 1, resume: bool = False, command: str | None = None) -> tuple[list[Outcome], str]:
    """Every (method, seed) run of ``preset``, one after another or, with ``workers`` > 1, in that
    many spawned processes (each run's torch threads default to the CPU count over ``workers``:
    on a small model two 1-thread runs side by side do more than one 2-thread run).

    One compare at a time writes an experiment (a lock file beside its run folders), so a run
    left RUNNING by a killed compare is known to be dead and is marked KILLED. With ``resume``,
    finished runs of the same config are reused, not repeated, and unfinished ones continue
    from their last checkpoint. Ctrl-C stops the workers, marks their runs KILLED and raises
    Interrupted with the command that continues."""
    import os

    from filelock import FileLock, Timeout

    base = list(overrides) + ([f"out={out}"] if out else [])
    if workers > 1 and not any(o.startswith("threads=") for o in base):
        base.append(f"threads={max(1, (os.cpu_count() or 1) // workers)}")
    configs = {(m, s): load_config(preset, base + [f"method={m}", f"seed={s}"]) for m in methods for s in seeds}
    first = next(iter(configs.values()))
    check_inputs(first)  # every bad input fails here, before the first run
    for method in methods:  # and a method whose run cannot fit its GPU
        check_plan(configs[(method, seeds[0])], what=f"method {method}: ")
    check_rollout(first)  # and a rollout backend that cannot serve the model
    out_dir = ensure_writable(first.out)
    uri = tracking_uri or first.log.tracking_uri or default_tracking_uri(out_dir)
    check_tracking(uri)
    experiment = experiment or f"compare-{first.preset}"
    client = tracking_client(uri)
    experiment_id = ensure_experiment(client, experiment, out_dir / "mlartifacts")
    lock = FileLock(str(ensure_writable(out_dir / experiment) / ".compare.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise StorageError(f"another tempo-bench compare is writing experiment {experiment!r} in {out_dir} "
                           f"(lock {lock.lock_file}); wait for it, or use another --experiment") from None
    try:
        jobs = plan_jobs(client, experiment_id, configs, config_identity, out_dir / experiment, resume)
        print(f"tempo-bench compare: {len(methods)} methods x {len(seeds)} seeds on preset {first.preset}"
              + (f", {workers} runs at a time" if workers > 1 else ""))
        print(f"  MLflow: {uri}  experiment={experiment}")
        reused = [j for j in jobs if j.reuse is not None]
        resumed = [j for j in jobs if j.resume_run_id is not None]
        if reused or resumed:
            print(f"  resuming: {len(reused)} finished runs reused, {len(resumed)} continued from a checkpoint, "
                  f"{len(jobs) - len(reused) - len(resumed)} to run from the start")
        outcomes = _execute(jobs, uri, experiment, str(out_dir), workers)
    except KeyboardInterrupt:
        done = _finished_count(client, experiment_id, configs, config_identity)
        raise Interrupted(f"{done} of {len(configs)} runs finished and kept in MLflow; unfinished ones are marked "
                          f"KILLED. Continue: {command or 'the same tempo-bench compare command with --resume'}") from None
    finally:
        lock.release()
    return outcomes, uri


def plan_jobs(client, experiment_id: str, configs: dict, identity_of, run_root: Path, resume: bool) -> list[Job]:
    """One job per (method, seed). Runs this experiment left RUNNING are dead (the caller holds
    the experiment's lock) and are marked KILLED. With ``resume``, a FINISHED run of the same
    config is reused and an unfinished one with a checkpoint is continued."""
    runs = client.search_runs([experiment_id], max_results=10000, order_by=["attributes.start_time DESC"])
    for run in runs:
        if run.info.status == "RUNNING":
            client.set_tag(run.info.run_id, "interrupted", "its compare process was stopped")
            client.set_terminated(run.info.run_id, "KILLED")
    jobs = []
    for (method, seed), config in configs.items():
        job = Job(method, seed, config.model_dump(), identity_of(config))
        same = [r for r in runs if r.data.tags.get("config_identity") == job.identity
                and r.data.tags.get("method") == method and r.data.tags.get("seed") == str(seed)]
        if resume and same:
            finished = [r for r in same if r.info.status == "FINISHED"]
            if finished:
                evals, steps = run_history(client, finished[0].info.run_id)
                job.reuse = Outcome(method, seed, finished[0].info.run_id, summarise_history(evals, steps,
                                                                                       config.eval.collapse_tolerance))
            else:
                folder = run_folder(run_root, run_name_of(method, seed), same[0].info.run_id)
                if latest_checkpoint(folder) is not None:
                    job.resume_run_id = same[0].info.run_id
        jobs.append(job)
    return jobs


def _finished_count(client, experiment_id: str, configs: dict, identity_of) -> int:
    identities = {identity_of(c) for c in configs.values()}
    runs = client.search_runs([experiment_id], max_results=10000)
    return len({(r.data.tags.get("method"), r.data.tags.get("seed")) for r in runs
                if r.info.status == "FINISHED" and r.data.tags.get("config_identity") in identities})


def _execute(jobs: list[Job], uri: str, experiment: str, out_dir: str, workers: int) -> list[Outcome]:
    """Run the jobs (reused ones are not run), sequentially or in spawned worker processes."""
    todo = [j for j in jobs if j.reuse is None]
    done: dict[tuple[str, int], Outcome] = {(j.method, j.seed): j.reuse for j in jobs if j.reuse is not None}
    if workers == 1:
        caches = RunCaches()  # the runs share the base model, starting critic and initial evaluation
        for i, job in enumerate(todo, 1):
            print(f"[{i}/{len(todo)}] {job.method} seed {job.seed}")
            done[(job.method, job.seed)] = _run_one(job, uri, experiment, out_dir, progress=True, worker=False,
                                                    caches=caches)
        return [done[(j.method, j.seed)] for j in jobs]
    import multiprocessing as mp
    import os
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    # after Ctrl-C the pool's queue semaphores are reclaimed by multiprocessing's resource tracker,
    # which would report it in a warning that says nothing to the user (the tracker starts with
    # the pool and reads its warning filter from the environment)
    os.environ.setdefault("PYTHONWARNINGS", "ignore:resource_tracker:UserWarning")
    pool = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_compare_worker)
    try:
        futures = {pool.submit(_run_one, job, uri, experiment, out_dir, False, True): job for job in todo}
        with tqdm(total=len(todo), desc="runs") as bar:
            for future in as_completed(futures):
                job = futures[future]
                try:
                    outcome = future.result()
                except Exception as err:  # a worker died (the pool then fails what it had left):
                    # recorded as failed; the finished runs and their MLflow data are kept
                    outcome = Outcome(job.method, job.seed, error=f"{type(err).__name__}: {err}")
                done[(job.method, job.seed)] = outcome
                final = outcome.values.get("eval/mean_at_k@final", math.nan)
                bar.write(f"{job.method} seed {job.seed}: " + (f"FAILED: {outcome.error}" if outcome.error
                                                              else f"final mean@k {final:.3f}"))
                bar.update(1)
    except KeyboardInterrupt:
        # the workers ignore SIGINT; SIGTERM makes each mark its run KILLED before it exits
        stop_processes(list(pool._processes or {}))  # noqa: SLF001 (the pool's worker pids)
        pool.shutdown(wait=True, cancel_futures=True)  # the workers are gone: this returns at once
        raise
    pool.shutdown()
    return [done[(j.method, j.seed)] for j in jobs]


_WORKER_CACHES: RunCaches | None = None  # a worker process's own, shared by the runs it is given


def _init_compare_worker() -> None:
    global _WORKER_CACHES
    init_worker()
    _WORKER_CACHES = RunCaches()


def _run_one(job: Job, uri: str, experiment: str, out_dir: str, progress: bool, worker: bool,
             caches: RunCaches | None = None) -> Outcome:
    """One run of a comparison, logged to MLflow; a failure is recorded, not raised. In a worker
    process an interruption is recorded too (the run is marked KILLED); in the main process it
    propagates."""
    caches = caches if caches is not None else _WORKER_CACHES

    config = RunConfig.model_validate(job.config)
    name = run_name_of(job.method, job.seed)
    outcome = Outcome(job.method, job.seed)
    try:
        with interruptible_run():
            if job.resume_run_id is not None:
                run_dir = run_folder(Path(out_dir) / experiment, name, job.resume_run_id)
                logger = MLflowLogger(uri, experiment, name, run_id=job.resume_run_id, spool_path=run_dir / SPOOL)
            else:
                logger = MLflowLogger(uri, experiment, name, artifact_root=Path(out_dir) / "mlartifacts")
                run_dir = run_folder(Path(out_dir) / experiment, name, logger.run_id)
                logger.spool_path = run_dir / SPOOL
            outcome.run_id = logger.run_id
            with logger:
                result = run_ttt(config, logger, out_dir=run_dir, progress=progress,
                                 on_step=ParentWatch() if worker else None, resume=job.resume_run_id is not None,
                                 caches=caches)
        outcome.values = summarise(result, collapse_tolerance=config.eval.collapse_tolerance)
    except KeyboardInterrupt:
        if not worker:
            raise
        exit_if_terminated()  # the run is marked KILLED; the parent is stopping its workers
        outcome.error = "interrupted"
    except Exception as err:  # one failed run must not lose the others
        outcome.error = f"{type(err).__name__}: {err}"
        print(f"  FAILED {job.method} seed {job.seed}: {outcome.error}")
        traceback.print_exc()
    return outcome
