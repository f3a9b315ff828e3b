"""Is a critic's falling reward quality the critic, or the answers it is shown? Each finished critic
run's final checkpoint against its start, crossed: the starting critic and the final critic each
score the starting policy's answers and the final policy's answers to the same test questions.

    python -m tempo_bench.analysis.critic_swap --tracking-uri sqlite:///runs/long/mlflow.db \\
        --out-root runs/long --experiments long-toy --out docs/long_horizon

Reading the 2 x 2 (within-question AUROC, pooled AUROC, separation d): if the final critic ranks
the starting answers as well as the starting critic did, the critic did not get worse, and a fall
on the final answers is theirs (the errors left are harder to tell); if it ranks them worse, the
critic itself drifted. Answers are k fresh samples per evaluation question (seeded), graded against
the hidden key (metrics only).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tempo_bench.analysis.long_horizon import CRITIC_METHODS
from tempo_bench.analysis.runs import load_run_table

from tempo_bench.config import RunConfig
from tempo_bench.core import metrics as M
from tempo_bench.core.loggers import MemoryLogger
from tempo_bench.critic.model import Critic, values_to_prob
from tempo_bench.experiments.probe import sample_test_questions
from tempo_bench.run.checkpoint import latest_checkpoint, load_state, restore_policy, run_folder
from tempo_bench.run.run import build_run

SEED = 12345  # the answers' sampling seed: the same draws for every run's two policies


def answers_of(run, k: int):
    """k seeded samples per evaluation question from the run's current policy: (batch, truth [G, k])."""
    with torch.random.fork_rng():
        torch.manual_seed(SEED)
        batch, _, truth = sample_test_questions(run, k)
    return batch, truth


def ranking(critic: Critic, batch, truth: np.ndarray) -> dict[str, float]:
    """How well ``critic`` tells right from wrong among the answers: AUROC within questions,
    pooled AUROC, and the separation d (Cohen's d of P(correct) between right and wrong)."""
    prob = values_to_prob(critic.score(batch)[1]).reshape(truth.shape).numpy()
    pb, p = M.pointbiserial(prob, truth), float(truth.mean())
    return {"auroc_within": M.auroc_within(prob, truth), "auroc": M.auroc(prob, truth),
            "d": float(M.separation_from_pointbiserial(pb, p)), "accuracy": p}


def swap(checkpoint: Path, k: int, out_root: Path) -> list[dict]:
    """The 2 x 2 of one run: rows (critic start|final, answers start|final) with ranking(). The
    starting critic is the one the run started from (cached under ``out_root``/critics)."""
    config = RunConfig(**load_state(checkpoint)["config"]).model_copy(update={"out": str(out_root)})
    run = build_run(config, MemoryLogger(), out_dir=out_root / "critic_swap")
    try:
        start_answers = answers_of(run, k)
        restore_policy(checkpoint, run.policy, run.optimizer)
        run.backend.sync_weights()
        final_answers = answers_of(run, k)
        answers = {"start": start_answers, "final": final_answers}
        # the starting critic scores before the final one is loaded: a critic sharing the policy's
        # base keeps its adapter on that base, which loading the final critic overwrites
        rows = [{"critic": "start", "answers": name, **ranking(run.critic_ops.critic, *a)} for name, a in answers.items()]
        final_critic = Critic.load(checkpoint / "critic", config.critic, config.model, run.policy, config.lora)
        return rows + [{"critic": "final", "answers": name, **ranking(final_critic, *a)} for name, a in answers.items()]
    finally:
        run.close()


def collect(tracking_uri: str, out_root: Path, experiments: list[str], k: int) -> pd.DataFrame:
    rows = []
    for experiment in experiments:
        runs = load_run_table(experiment, tracking_uri)
        for _, r in runs[runs.method.isin(CRITIC_METHODS)].iterrows():
            checkpoint = latest_checkpoint(run_folder(out_root / experiment, r.run_name, r.run_id))
            if checkpoint is None:
                print(f"  {experiment} {r.run_name}: no checkpoint, skipped")
                continue
            step = load_state(checkpoint)["step"]
            for row in swap(checkpoint, k, out_root):
                rows.append({"experiment": experiment, "method": r.method, "seed": r.seed, "step": step, **row})
            print(f"  {experiment} {r.run_name}: step {step} done")
    return pd.DataFrame(rows)


def markdown(table: pd.DataFrame) -> str:
    """Per experiment and method: each of the four cells as the mean over seeds."""
    lines = ["| experiment | method | seeds | critic | answers | answers' accuracy | AUROC-within | pooled AUROC | d |",
             "|---|---|---|---|---|---|---|---|---|"]
    for (experiment, method, critic, answers), g in table.groupby(["experiment", "method", "critic", "answers"],
                                                                  sort=False):
        lines.append(f"| {experiment} | {method} | {g.seed.nunique()} | {critic} | {answers} | {g.accuracy.mean():.3f} | "
                     f"{g.auroc_within.mean():.3f} | {g.auroc.mean():.3f} | {g.d.mean():.2f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Starting vs final critic on starting vs final answers, per run.")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--out-root", required=True, help="the runs' --out folder (checkpoints under <out>/<experiment>)")
    parser.add_argument("--experiments", required=True, help="comma-separated experiment names")
    parser.add_argument("--k", type=int, default=8, help="samples per evaluation question")
    parser.add_argument("--out", default="docs/long_horizon")
    args = parser.parse_args(argv)
    out = Path(args.out)
    table = collect(args.tracking_uri, Path(args.out_root), [e for e in args.experiments.split(",") if e], args.k)
    if table.empty:
        raise SystemExit("error: no critic run with a checkpoint in these experiments")
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "critic_swap.csv", index=False)
    (out / "critic_swap.md").write_text(markdown(table) + "\n")
    print(markdown(table))
    print(json.dumps({"wrote": str(out / "critic_swap.md")}))


if __name__ == "__main__":
    main()
