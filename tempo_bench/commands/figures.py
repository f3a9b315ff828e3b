"""`tempo-bench figures`: the paper's figures and tables from an MLflow experiment."""

from __future__ import annotations

import os
from pathlib import Path

from tempo_bench.analysis.report import write_report
from tempo_bench.core.errors import ConfigError
from tempo_bench.core.tracking import check_tracking, ensure_writable, sqlite_path


def add_parser(sub) -> None:
    fg = sub.add_parser("figures", help="the paper's figures (PNG + PDF) and results tables from an "
                        "MLflow experiment")
    fg.add_argument("--experiment", required=True, help="MLflow experiment (e.g. compare-toy, or a sweep's)")
    fg.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                    "sqlite:///runs/mlflow.db)")
    fg.add_argument("--out", required=True, help="folder for the figures and tables")
    fg.add_argument("--refresh", action="store_true", help="ignore the parquet cache of finished runs")
    fg.add_argument("--include-partial", action="store_true", help="also plot runs that did not finish "
                    "(killed, failed, pruned, still running), labelled '<method> (partial)'; by default "
                    "only finished runs count, and the command says how many it skipped and why")
    fg.add_argument("--collapse-tolerance", type=float, default=0.05, help="a run has collapsed once mean@k stays "
                    "below its step-0 value minus this to the end (default 0.05; in [0, 1])")
    fg.set_defaults(func=cmd_figures)


def cmd_figures(args) -> int:
    uri = (args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
           or f"sqlite:///{(Path('runs') / 'mlflow.db').resolve()}")
    store = sqlite_path(uri)
    if store is not None:  # figures only reads: a mistyped path is an error (it made a new, empty store)
        if not store.is_file():
            raise ConfigError(f"no MLflow store at {store}; pass --tracking-uri sqlite:///OUT/mlflow.db of the "
                              "runs' --out folder")
    else:
        check_tracking(uri)
    if not 0 <= args.collapse_tolerance <= 1:
        raise ConfigError(f"--collapse-tolerance takes a value in [0, 1], got {args.collapse_tolerance}")
    ensure_writable(args.out)
    print(f"tempo-bench figures: experiment {args.experiment} at {uri} -> {args.out}")
    try:
        written = write_report(args.experiment, uri, Path(args.out), refresh=args.refresh,
                               include_partial=args.include_partial, collapse_tolerance=args.collapse_tolerance)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    print(f"{len(written)} files in {args.out}")
    return 0
