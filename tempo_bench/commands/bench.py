"""`tempo-bench bench`: speed and memory measured side by side."""

from __future__ import annotations

from tempo_bench.core.errors import ConfigError


def add_parser(sub) -> None:
    bn = sub.add_parser("bench", help="speed and memory side by side: a step against TRL, rollouts against "
                        "generate and a forward floor, training and critic passes, sweep sharing, the full toy comparison's wall time "
                        "and peak RSS, a TEMPO step profile (about 15 minutes on 2 cores)")
    bn.add_argument("--out", help="write the results as JSON to this file")
    bn.add_argument("--only", help="comma-separated sections: trl, rollout, passes, sweep, memory, profile")
    bn.add_argument("--threads", type=int, default=2, help="torch threads in the measured runs (default 2)")
    bn.set_defaults(func=cmd_bench)


def cmd_bench(args) -> int:
    try:
        from tempo_bench.benchmarks.run import SECTIONS
        from tempo_bench.benchmarks.run import main as bench_main
    except ImportError as err:
        raise ConfigError(f"the benchmarks need the bench extra: pip install -e '.[bench]' ({err})") from None
    sections = args.only.split(",") if args.only else SECTIONS
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown bench sections {unknown}; choose from {', '.join(SECTIONS)}")
    if "trl" in sections:
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            raise ConfigError("the TRL comparison needs TRL: pip install -e '.[bench]' (or --only without trl)")
    return bench_main(args.out, sections, args.threads)
