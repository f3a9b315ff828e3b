"""`tempo-bench run`: one method on one preset, logged to MLflow; `--dry-run` describes it."""

from __future__ import annotations

import errno
import shlex
from pathlib import Path

from tempo_bench.commands.describe import describe_run
from tempo_bench.config import load_config
from tempo_bench.core.errors import ConfigError, Interrupted, StorageError
from tempo_bench.core.loggers import (
    SPOOL,
    MemoryLogger,
    MLflowLogger,
    default_tracking_uri,
)
from tempo_bench.core.processes import launched_world_size, stop_at_step_end_on_sigterm
from tempo_bench.core.tracking import check_tracking, ensure_writable
from tempo_bench.methods.catalog import method_class
from tempo_bench.run.checkpoint import (
    check_resumable,
    check_run_folder_free,
    find_resumable,
    latest_checkpoint,
    load_state,
    run_folder,
    run_folders,
)
from tempo_bench.run.distributed import Ranks, check_same_config, launched_ranks
from tempo_bench.run.distributed import finish as finish_ranks
from tempo_bench.run.inputs import check_inputs, check_rollout
from tempo_bench.run.memory_plan import check_plan
from tempo_bench.run.run import run_name_of, run_ttt


def add_parser(sub) -> None:
    run = sub.add_parser("run", help="run one method on one preset, logged to MLflow",
                         epilog="Data-parallel over N processes (GPUs, or CPU ranks on gloo): torchrun "
                         "--nproc-per-node N $(which tempo-bench) run ... --set rollout.seeding=question "
                         "(docs/real-models.md: Scaling out)")
    run.add_argument("--preset", required=True, help="preset name (toy-smoke, toy, ...) or a .yaml path")
    run.add_argument("--method", help="method to run (overrides the preset's)")
    run.add_argument("--seed", type=int, help="run seed (overrides the preset's)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="dotted config override, e.g. train.lr=3e-4 (repeatable)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                     "else sqlite:///OUT/mlflow.db)")
    run.add_argument("--experiment", help="MLflow experiment name (default: log.experiment)")
    run.add_argument("--out", help="output folder (default: the preset's `out`, usually runs/)")
    run.add_argument("--budget-tokens", type=int, help="stop once rollout + policy + critic tokens "
                     "reach this many (compare methods at equal compute)")
    run.add_argument("--resume", action="store_true", help="continue the latest checkpointed run of "
                     "this method and seed (same MLflow run; needs train.checkpoint_every > 0), or start it where "
                     "none was checkpointed yet: one command line for a job that may be requeued")
    run.add_argument("--dry-run", action="store_true", help="validate, print the resolved config and "
                     "what the run would load, and stop (no model, data or network access)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)


SUMMARY_KEYS = [
    ("eval/mean_at_k", "mean@k"),
    ("eval/maj_at_k", "maj@k"),
    ("eval/pass_at_k", "pass@k"),
    ("eval/greedy_acc", "greedy"),
    ("eval/distinct_answers", "distinct answers"),
]


def cmd_run(args) -> int:
    overrides = list(args.overrides)
    for flag, key in ((args.method, "method"), (args.seed, "seed"), (args.out, "out"),
                      (args.tracking_uri, "log.tracking_uri"), (args.experiment, "log.experiment"),
                      (args.budget_tokens, "train.budget_tokens")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    config = load_config(args.preset, overrides)
    if args.dry_run:
        print(describe_run(config))
        return 0
    ranks = launched_ranks(config.model.device, config.train.sharding)  # one, unless torchrun started several (docs/real-models.md, "Scaling out")
    try:
        return _run(args, config, ranks)
    finally:
        finish_ranks(ranks)


def _run(args, config, ranks: Ranks) -> int:
    check_same_config(ranks, config)  # the same error on every rank, before any collective can hang
    check_inputs(config)  # fetches the model's config if needed, which the plan reads
    plan = check_plan(config)  # a run that cannot fit its GPU stops here, before any work
    check_rollout(config)  # and one its rollout backend cannot serve
    ensure_writable(config.out)
    uri = config.log.tracking_uri or default_tracking_uri(Path(config.out))
    if ranks.main:
        print(f"tempo-bench run: preset={config.preset} method={config.method} seed={config.seed}"
              + (f" on {ranks.world} ranks" if ranks.distributed else ""))
        if method_class(config.method).uses_test_labels:
            print(f"  NOTE: {config.method} trains on the TEST labels: an upper bound, not a TTT method")
        print(f"  MLflow: {uri}  experiment={config.log.experiment}")
        if plan is not None:
            print("\n".join(f"  {line}" for line in plan.lines()))
    # the checkpointed folder --resume continues (None: nothing yet, the run starts)
    resumable = find_resumable(Path(config.out), config.log.experiment,
                               run_name_of(config.method, config.seed)) if args.resume else None
    resume = resumable is not None
    if resume and ranks.main:  # before its MLflow run is reopened: a live process may hold it
        check_run_folder_free(resumable)
    if args.resume and not resume and ranks.main:  # one command line for a job that may be requeued
        print(f"  --resume: no checkpointed run {run_name_of(config.method, config.seed)!r} under "
              f"{Path(config.out) / config.log.experiment} yet; starting it")
        _close_abandoned_attempts(config, uri)
    logger, run_dir = _on_rank_zero(ranks, lambda: _open_logger(resumable, config, uri))
    try:
        with logger, stop_at_step_end_on_sigterm():
            result = run_ttt(config, logger, out_dir=run_dir, progress=not args.quiet and ranks.main,
                             resume=resume, ranks=ranks)
    except KeyboardInterrupt:
        raise Interrupted(_resume_hint(args.argv, run_dir, config)) from None
    except OSError as err:
        if err.errno != errno.ENOSPC:
            raise
        raise StorageError(f"no space left on the device holding {err.filename or run_dir}: free some, then "
                           f"continue from the last checkpoint with\n  {command_line(args.argv, resume=True)}") from None
    if ranks.main:
        _print_summary(result, uri)
    return 0


def _close_abandoned_attempts(config, uri: str) -> None:
    """Attempts of this run killed before their first checkpoint stay RUNNING in the store for
    good: --resume, which starts the run afresh, marks them KILLED (a folder without a checkpoint
    that no live process holds, named after its MLflow run: run_folder)."""
    from tempo_bench.core.tracking import tracking_client

    root, run_name = Path(config.out) / config.log.experiment, run_name_of(config.method, config.seed)
    free = set()
    for folder in run_folders(root, run_name):
        try:
            if latest_checkpoint(folder) is None:
                check_run_folder_free(folder)
                free.add(folder)
        except ConfigError:  # a live process holds it
            continue
    if not free:
        return
    client = tracking_client(uri)
    experiment = client.get_experiment_by_name(config.log.experiment)
    if experiment is None:
        return
    for run in client.search_runs([experiment.experiment_id], "attributes.status = 'RUNNING'"):
        folder = run_folder(root, run_name, run.info.run_id)
        if folder in free:
            client.set_terminated(run.info.run_id, "KILLED")
            print(f"  --resume: the attempt {folder.name} (killed before its first checkpoint) is marked KILLED")


def _open_logger(resumable: Path | None, config, uri: str) -> tuple[MLflowLogger, Path]:
    """The run's MLflow logger and folder: a new run, or the checkpointed one in ``resumable``."""
    out, run_name = Path(config.out), run_name_of(config.method, config.seed)
    check_tracking(uri)
    if resumable is not None:
        run_dir = resumable
        run_id = check_resumable(latest_checkpoint(run_dir), config)["run_id"]
        logger = MLflowLogger(uri, config.log.experiment, run_name, run_id=run_id, spool_path=run_dir / SPOOL)
        _warn_if_moved(logger, out)
        return logger, run_dir
    logger = MLflowLogger(uri, config.log.experiment, run_name, artifact_root=out / "mlartifacts")
    run_dir = run_folder(out / config.log.experiment, run_name, logger.run_id)
    logger.spool_path = run_dir / SPOOL
    return logger, run_dir


def _warn_if_moved(logger: MLflowLogger, out: Path) -> None:
    """MLflow records a run's artifact folder as an absolute path: a run folder moved with its
    store resumes, but its artifacts still go to the old place. Say so rather than split silently."""
    from urllib.parse import urlparse

    artifacts = logger.client.get_run(logger.run_id).info.artifact_uri
    path = Path(urlparse(artifacts).path) if artifacts.startswith(("file:", "/")) else None
    if path is not None and not path.resolve().is_relative_to(out.resolve()):
        print(f"  note: this run's artifacts are recorded at {path} (outside --out {out}: was the folder moved?); "
              "the resumed run writes its artifacts there too")


def _on_rank_zero(ranks: Ranks, open_logger) -> tuple[object, Path]:
    """Rank 0 opens the MLflow run; every rank learns its folder, or rank 0's error (other ranks
    log nowhere: a MemoryLogger)."""
    if not ranks.distributed:
        return open_logger()
    logger, run_dir, failure = MemoryLogger(), None, None
    if ranks.main:
        try:
            logger, run_dir = open_logger()
        except Exception as err:  # every rank stops with it, rather than waiting for rank 0
            failure = err
    shared_dir, message = ranks.broadcast((None if run_dir is None else str(run_dir),
                                           None if failure is None else f"{failure}"))
    if failure is not None:
        raise failure
    if message is not None:
        raise ConfigError(f"rank 0 could not open the run: {message}")
    return logger, Path(shared_dir)


def command_line(argv: list[str], resume: bool = False) -> str:
    """The command a user typed, to print after an interruption; with ``resume``, with
    ``--resume`` added (once)."""
    world = launched_world_size()
    launcher = f"torchrun --nproc-per-node={world} $(which tempo-bench)" if world > 1 else "tempo-bench"
    return f"{launcher} {shlex.join([*argv, *(['--resume'] if resume and '--resume' not in argv else [])])}"


def _resume_hint(argv: list[str], run_dir: Path, config) -> str:
    """What an interrupted run left behind, and the command that continues it."""
    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return (f"MLflow run marked KILLED; no checkpoint was written yet (train.checkpoint_every="
                f"{config.train.checkpoint_every}). Start again: {command_line(argv)}")
    return (f"MLflow run marked KILLED; checkpoint of step {load_state(checkpoint)['step']} kept in "
            f"{checkpoint.parent}. Continue it: {command_line(argv, resume=True)}")


def _print_summary(result, uri: str) -> None:
    first, last = min(result.evals), max(result.evals)
    print(f"\nEvaluation on the test questions (step {first} -> step {last}):")
    for key, label in SUMMARY_KEYS:
        if key in result.evals[first]:
            a, b = result.evals[first][key], result.evals[last][key]
            print(f"  {label:<17} {a:6.3f} -> {b:6.3f}  ({b - a:+.3f})")
    steps = sorted(result.steps)
    if steps:
        s0, s1 = result.steps[steps[0]], result.steps[steps[-1]]
        if "reward/pointbiserial" in s1:
            print(f"Reward quality (point-biserial), step {steps[0]} -> {steps[-1]}: "
                  f"{s0['reward/pointbiserial']:.3f} -> {s1['reward/pointbiserial']:.3f}")
        mean_step = sum(result.steps[s]["time/step"] for s in steps) / len(steps)
        print(f"Mean step time {mean_step:.2f} s (without evaluation); tokens generated for "
              f"training: {s1['tokens/rollout']:,}")
    trained = next((result.out_dir / name for name in ("adapter", "model") if (result.out_dir / name).is_dir()),
                   result.out_dir)
    print(f"\nRun {result.run_id}; trained {'adapter' if trained.name == 'adapter' else 'weights'} in {trained}")
    if uri.startswith("sqlite:///"):
        print(f"Browse it: mlflow ui --backend-store-uri {uri}")
