"""The ``tempo-bench`` command line: one sub-command per module of this package.

    tempo-bench run --preset toy-smoke [--method M] [--set key=value ...] [--tracking-uri URI] [--out DIR]
    tempo-bench compare --preset toy --methods all --seeds 0,1,2
    tempo-bench sweep sweeps/recal_interval.yaml [--workers 2]
    tempo-bench eval --adapter runs/.../adapter --task toy [--lm-eval]
    tempo-bench figures --experiment compare-toy --out figures/
    tempo-bench probe --preset toy
    tempo-bench bench
    tempo-bench toy-model build [--stage S] [--out DIR] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys

# OpenMP busy-waiting with every core busy made a training step 20x slower on 2 cores; passive
# waiting costs nothing measurable here. Must be set before torch is imported (below).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tempo_bench.commands import (  # noqa: E402
    bench,
    compare,
    evaluate,
    figures,
    probe,
    run,
    sweep,
    toy,
)
from tempo_bench.core.errors import Interrupted, UserError  # noqa: E402
from tempo_bench.core.processes import deliver_swallowed_interrupts, quiet_libraries  # noqa: E402

COMMANDS = [run, compare, sweep, evaluate, figures, probe, bench, toy]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tempo-bench",
        description="Test-time training benchmarks: standard TTT, critic methods and TEMPO.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected failures (a bad config, a malformed file, an unreachable store,
    an unwritable folder) end in one ``error:`` line and exit code 2; Ctrl-C in one line that says
    how to continue, exit code 130."""
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    quiet_libraries()
    deliver_swallowed_interrupts()
    try:
        return args.func(args)
    except (UserError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"\ninterrupted: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
