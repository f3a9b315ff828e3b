"""`tempo-bench probe`: can the critic rank test answers better than majority vote?"""

from __future__ import annotations

from pathlib import Path

from tempo_bench.config import load_config
from tempo_bench.core.errors import ConfigError
from tempo_bench.core.tracking import ensure_writable
from tempo_bench.experiments.probe import main as probe_main
from tempo_bench.run.inputs import check_inputs, check_rollout


def add_parser(sub) -> None:
    pr = sub.add_parser("probe", help="before TTT: can the critic rank test answers better than majority "
                        "vote? (within-question AUROC, before and after recalibration)")
    pr.add_argument("--preset", required=True)
    pr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pr.add_argument("--k", type=int, default=8, help="samples per test question (default 8)")
    pr.add_argument("--estep-rounds", type=int, default=4, help="E-steps before the second measurement")
    pr.add_argument("--out", help="write the results as JSON to this file")
    pr.set_defaults(func=cmd_probe)


def cmd_probe(args) -> int:
    config = load_config(args.preset, list(args.overrides))
    if config.task.labeled_size <= config.critic.probe_questions:
        raise ConfigError("the probe needs a labeled pool larger than critic.probe_questions")
    check_inputs(config)
    check_rollout(config)
    if args.out:
        ensure_writable(Path(args.out).parent or Path("."))
    return probe_main(config, args.k, args.estep_rounds, args.out)
