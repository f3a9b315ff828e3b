"""`tempo-bench sweep`: an Optuna sweep from a spec file."""

from __future__ import annotations

import sys

from tempo_bench.commands.run import command_line
from tempo_bench.core.errors import ConfigError
from tempo_bench.experiments.sweep import describe, run_sweep


def add_parser(sub) -> None:
    sw = sub.add_parser("sweep", help="an Optuna sweep (e.g. over TEMPO's recalibration interval)")
    sw.add_argument("spec", help="sweep spec YAML (see sweeps/)")
    sw.add_argument("--study", help="study name (default: the spec's `study`)")
    sw.add_argument("--storage", help="Optuna RDB URL (sqlite:///..., postgresql://...); default: a "
                    "JournalStorage file in OUT/sweeps/STUDY/")
    sw.add_argument("--n-trials", type=int, help="finished trials the study should reach (default: the spec's)")
    sw.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    sw.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under OUT)")
    sw.add_argument("--out", default="runs", help="output folder (default: runs)")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    sw.set_defaults(func=cmd_sweep)


def cmd_sweep(args) -> int:
    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    if args.n_trials is not None and args.n_trials < 1:  # 0 or -1 were read as "the spec's"
        raise ConfigError(f"--n-trials must be >= 1, got {args.n_trials}")
    study, left = run_sweep(args.spec, args.study, args.storage, args.n_trials, args.workers,
                            args.tracking_uri, args.out, progress=not args.quiet,
                            command=command_line(args.argv))
    print(describe(study))
    if left:
        print("the sweep is incomplete:\n  " + "\n  ".join(left) + "\nrun the same command again to "
              "finish it (completed trials are kept)", file=sys.stderr)
        return 1
    return 0
