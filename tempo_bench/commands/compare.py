"""`tempo-bench compare`: several methods x seeds, a results table, figures."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tempo_bench.analysis.report import write_report
from tempo_bench.commands.run import command_line
from tempo_bench.config import load_config
from tempo_bench.core.errors import ConfigError
from tempo_bench.core.tracking import ensure_writable
from tempo_bench.experiments.compare import parse_methods, parse_seeds, run_compare
from tempo_bench.experiments.results import results_table
from tempo_bench.methods.catalog import default_methods
from tempo_bench.policy.model import resolve_device


def add_parser(sub) -> None:
    cmp = sub.add_parser("compare", help="several methods x seeds into one MLflow experiment, "
                         "with a results table (95%% bootstrap CIs over seeds)")
    cmp.add_argument("--preset", required=True)
    cmp.add_argument("--methods", help="comma-separated methods, or 'all' (every registered method); default: "
                     "the registered default comparison, " + ",".join(default_methods()))
    cmp.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    cmp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cmp.add_argument("--tracking-uri")
    cmp.add_argument("--experiment", help="MLflow experiment (default: compare-<preset>)")
    cmp.add_argument("--out", help="output folder (default: the preset's `out`)")
    cmp.add_argument("--budget-tokens", type=int, help="equal compute: token budget per run")
    cmp.add_argument("--table", help="also write the results table (markdown) to this file")
    cmp.add_argument("--workers", default="auto",
                     help="runs at a time, each in its own process with CPUs / workers torch threads (default "
                     "auto: one per CPU core for a model on the CPU, where small runs side by side beat one "
                     "run on all cores; 1 on a GPU)")
    cmp.add_argument("--figures", metavar="DIR", help="also write the experiment's figures and tables "
                     "(tempo-bench figures) to DIR")
    cmp.add_argument("--resume", action="store_true", help="after an interruption: reuse the experiment's "
                     "finished runs of the same config, continue unfinished ones from their last checkpoint, "
                     "run the rest")
    cmp.set_defaults(func=cmd_compare)


def _compare_workers(text: str, device: str, runs: int) -> int:
    if text != "auto":
        try:
            workers = int(text)
        except ValueError:
            workers = 0
        if workers < 1:
            raise ConfigError(f"--workers takes 'auto' or a whole number >= 1, got {text!r}")
        return workers
    if resolve_device(device) != "cpu":
        return 1
    return max(1, min(os.cpu_count() or 1, runs))


def cmd_compare(args) -> int:
    try:
        methods = parse_methods(args.methods) if args.methods is not None else default_methods()
        seeds = parse_seeds(args.seeds)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    overrides = list(args.overrides) + (
        [f"train.budget_tokens={args.budget_tokens}"] if args.budget_tokens else [])
    config = load_config(args.preset, overrides)  # the preset's own settings (each run adds its method and seed)
    for folder, what in ((Path(args.table).parent if args.table else None, "--table folder"),
                         (args.figures, "--figures folder")):
        if folder:  # before the training, not after it (the results would be lost with a traceback)
            ensure_writable(folder, what)
    workers = _compare_workers(args.workers, config.model.device, len(methods) * len(seeds))
    outcomes, uri = run_compare(args.preset, methods, seeds, overrides, args.tracking_uri, args.out,
                                args.experiment, workers, resume=args.resume,
                                command=command_line(args.argv, resume=True))
    table = results_table(outcomes)
    print("\nFinal metrics, mean [95% bootstrap CI] over seeds (pb = reward point-biserial, "
          "mean of the first / last 5 steps; critic gap = test - probe ECE at the end):\n")
    print(table)
    if args.table:
        Path(args.table).write_text(table + "\n")
    failed = [o for o in outcomes if o.error]
    for o in failed:
        print(f"FAILED {o.method} seed {o.seed}: {o.error}", file=sys.stderr)
    if uri.startswith("sqlite:///"):
        print(f"\nCompare the runs: mlflow ui --backend-store-uri {uri}")
    if args.figures:
        experiment = args.experiment or f"compare-{config.preset}"
        print(f"\nFigures of experiment {experiment}:")
        write_report(experiment, uri, ensure_writable(args.figures), collapse_tolerance=config.eval.collapse_tolerance)
        print(f"Accuracy against step: {Path(args.figures) / 'accuracy_vs_step.png'}")
    return 1 if failed else 0
