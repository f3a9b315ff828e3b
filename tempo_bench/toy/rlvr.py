"""The RLVR stage of the embedded default: the paper's starting point, in miniature.

Before TTT, the paper's actor and critic come out of a PPO run with true rewards on a large labeled
pool that has converged (DESIGN section 2). :func:`run_rlvr` does the same to the pretrained toy
model: each step samples ``n`` responses to ``prompts_per_step`` pool questions, grades them
against their answers (+1/-1), scores every state with the critic, and makes one PPO update of the
whole actor with token advantages R - V(x, y_<t) (whitened) and one fit of the critic to the
outcomes (clipped value loss). The actor and critic it returns are what every toy TTT run starts
from (``model.path: toy-rlvr``, ``critic.init: toy-rlvr``).

Deterministic from its spec on one CPU thread: the questions of a step, the sampling and the
updates are all seeded.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tempo_bench.config import CriticConfig, TrainConfig
from tempo_bench.core import metrics as M
from tempo_bench.core.algos import em_token_advantages
from tempo_bench.core.seeds import questions_for_step
from tempo_bench.critic.model import Critic
from tempo_bench.critic.ops import rollout_labeled
from tempo_bench.policy.batch import generation_batch
from tempo_bench.policy.model import load_tokenizer
from tempo_bench.policy.update import policy_update
from tempo_bench.rollout import SamplingParams
from tempo_bench.rollout.hf import HFBackend
from tempo_bench.tasks import load_task_data
from tempo_bench.tasks.toy import toy_pool


# The seeds the shipped checkpoints were built with (an arithmetic form, older than core/seeds.py's
# hashed triples): (per seed, per step, offset) for each of the stage's draws. They stay so that
# `tempo-bench toy-model build` rebuilds the shipped weights bit for bit (tests/test_toy_rlvr.py);
# the stage's draws never meet a TTT run's, which all come from core/seeds.py.
RECORDED_SEEDING = {
    "question_order": (1_000_003, 7919, 3 * 104_729),
    "critic_fit": (31, 1, 0),
    "step": (1_000_003, 1, 0),
    "score": (7_919, 1, 0),
}


def recorded_seed(seed: int, step: int, draw: str) -> int:
    per_seed, per_step, offset = RECORDED_SEEDING[draw]
    return (seed * per_seed + step * per_step + offset) % (2**63)


@dataclass
class RLVRSpec:
    """Everything the RLVR stage depends on; stored in the manifest."""

    seed: int = 0
    steps: int = 150
    prompts_per_step: int = 32
    n: int = 8
    max_new_tokens: int = 96
    temperature: float = 1.0
    lr: float = 5e-5  # the actor, trained in full (no LoRA: 269k parameters)
    clip_low: float = 0.2
    clip_high: float = 0.28
    critic_lr: float = 3e-4
    critic_epochs: int = 2
    critic_cliprange: float = 2.0  # value clip around the pre-update values (2: none; the targets are +-1)
    critic_minibatch_rows: int = 64
    eval_every: int = 25
    eval_questions: int = 128  # held-out pool questions and test questions scored on the way
    eval_k: int = 4

    def train_config(self):
        return TrainConfig(lr=self.lr, clip_low=self.clip_low, clip_high=self.clip_high, loss="ppo")

    def critic_config(self):
        return CriticConfig(lr=self.critic_lr, minibatch_rows=self.critic_minibatch_rows)


def rlvr_step(step: int, spec: RLVRSpec, actor, optimizer, critic, backend, questions, grader, pad_id: int,
              train_cfg) -> dict[str, float]:
    """One PPO step on labeled ``questions``: sample, grade, score, update actor then critic."""
    sampling = SamplingParams(n=spec.n, temperature=spec.temperature, max_new_tokens=spec.max_new_tokens)
    generation, correct = rollout_labeled(backend, questions, spec.n, sampling, grader)
    batch = generation_batch(generation, pad_id)
    targets = torch.as_tensor(correct.reshape(-1), dtype=torch.float) * 2 - 1
    values, final = critic.score(batch)
    advantages = em_token_advantages(values[:, : batch.mask.shape[1]], targets, batch.mask)
    policy_stats = policy_update(actor, optimizer, batch, advantages, train_cfg, spec.temperature)
    critic_stats = critic.fit(batch, targets, torch.ones(len(targets)), spec.critic_epochs, spec.critic_cliprange,
                              spec.critic_minibatch_rows, torch.Generator().manual_seed(recorded_seed(spec.seed, step, "critic_fit")))
    final = final.reshape(correct.shape).numpy()
    return {
        "accuracy": float(correct.mean()),
        "critic_auroc_within": M.auroc_within(final, correct),
        "value_loss": critic_stats["critic/value_loss"],
        "entropy": policy_stats.get("entropy", float("nan")),
    }


def score_on(backend, questions, answers: list[str], k: int, max_new_tokens: int, grader) -> dict[str, float]:
    """mean@k and maj@k of the current actor on ``questions`` (true answers given)."""
    generation = backend.generate([q.prompt for q in questions],
                                  SamplingParams(n=k, temperature=1.0, max_new_tokens=max_new_tokens))
    got, clusters = grader.grade_generation(generation)
    correct = grader.correctness(answers, got)
    return {"mean_at_k": M.mean_at_k(correct), "maj_at_k": M.maj_at_k(clusters, correct)}


def run_rlvr(base_dir, spec: RLVRSpec, task_config, show_progress: bool = True, critic_base_dir=None):
    """PPO with a critic on the toy task's labeled pool, from the pretrained checkpoint at
    ``base_dir`` (the critic: a value head on ``critic_base_dir``, default ``base_dir``). Returns
    (actor, critic, trajectory); the trajectory scores held-out pool questions and the test
    questions every ``eval_every`` steps (evidence of convergence)."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM

    task = load_task_data(task_config)
    pool = toy_pool(task_config)
    # D_L of the TTT runs is the pool's head (tasks/toy.py): held out here is its tail
    held_out, train_pool = pool[-spec.eval_questions:], pool[: -spec.eval_questions]
    test = task.test[: spec.eval_questions]
    test_answers = [task.answer_key.answer(q.id) for q in test]
    tokenizer = load_tokenizer(str(base_dir))
    torch.manual_seed(spec.seed)
    actor = AutoModelForCausalLM.from_pretrained(base_dir)
    backend = HFBackend(actor, tokenizer)
    critic = Critic.from_pretrained(str(critic_base_dir or base_dir), spec.critic_config())
    optimizer = torch.optim.AdamW(actor.parameters(), lr=spec.lr, weight_decay=0.0)
    train_cfg = spec.train_config()
    grader = task.grader

    def checkpoint_scores(step: int) -> dict:
        with torch.random.fork_rng():
            torch.manual_seed(recorded_seed(spec.seed, step, "score"))
            pool_scores = score_on(backend, held_out, [q.answer for q in held_out], spec.eval_k,
                                   spec.max_new_tokens, grader)
            test_scores = score_on(backend, test, test_answers, spec.eval_k, spec.max_new_tokens, grader)
        return {"step": step, **{f"pool_{k}": round(v, 4) for k, v in pool_scores.items()},
                **{f"test_{k}": round(v, 4) for k, v in test_scores.items()}}

    trajectory = [checkpoint_scores(0)]
    recent: list[dict] = []
    with tqdm(range(1, spec.steps + 1), desc="RLVR (PPO + critic on the labeled pool)",
              disable=not show_progress) as bar:
        for step in bar:
            torch.manual_seed(recorded_seed(spec.seed, step, "step"))
            questions = questions_for_step(train_pool, step, spec.prompts_per_step, spec.seed, seeding=(
                lambda seed, epoch, _: recorded_seed(seed, epoch, "question_order")))
            stats = rlvr_step(step, spec, actor, optimizer, critic, backend, questions, grader,
                              tokenizer.pad_token_id, train_cfg)
            recent = (recent + [stats])[-spec.eval_every:]
            bar.set_postfix(acc=f"{stats['accuracy']:.2f}", critic_auc=f"{stats['critic_auroc_within']:.2f}")
            if step % spec.eval_every == 0 or step == spec.steps:
                trajectory.append({**checkpoint_scores(step), **{
                    f"train_{k}": _finite_mean([s[k] for s in recent]) for k in recent[0]}})
                if show_progress:
                    bar.write(_trajectory_line(trajectory[-1]))
    actor.eval()
    return actor, critic, trajectory


def _finite_mean(values: list[float]) -> float:
    """Mean of the finite values (AUROC-within is NaN on a batch where no group has both right and
    wrong samples), rounded; NaN if there are none."""
    finite = [v for v in values if np.isfinite(v)]
    return round(float(np.mean(finite)), 4) if finite else float("nan")


def _trajectory_line(point: dict) -> str:
    return (f"step {point['step']:4d}: pool mean@k {point['pool_mean_at_k']:.3f} maj@k {point['pool_maj_at_k']:.3f}"
            f" | test mean@k {point['test_mean_at_k']:.3f} maj@k {point['test_maj_at_k']:.3f}"
            f" | train acc {point.get('train_accuracy', float('nan')):.3f}"
            f" critic AUROC-within {point.get('train_critic_auroc_within', float('nan')):.3f}")

