"""The metrics of a training step, computed from the step's batch and, apart from it, the true
correctness of every row (metrics code only: the hidden answers of the unlabeled test questions
reach these functions and never a method)."""

from __future__ import annotations

import numpy as np

from tempo_bench.core import metrics as M
from tempo_bench.critic.ops import critic_quality
from tempo_bench.grading.answers import Grader
from tempo_bench.methods.base import RolloutBatch


def true_correctness(batch: RolloutBatch, answer_key, grader: Grader) -> np.ndarray:
    """[G, N] true correctness of every row: labeled rows from their visible labels, unlabeled
    rows from the hidden key."""
    hidden = batch.unlabeled_groups
    checked = dict(zip(hidden, grader.correctness([answer_key.answer(batch.questions[i].id) for i in hidden],
                                                  [batch.answers[i] for i in hidden])))
    return np.array([known if known is not None else checked[i] for i, known in enumerate(batch.labeled_correct)],
                    dtype=bool)


def critic_diagnostics(probe_scores: dict[str, float], batch: RolloutBatch, truth: np.ndarray) -> dict[str, float]:
    """critic/probe/* (the held-out labeled probe's scores, as the critic_probe phase made them),
    critic/test/* (this step's unlabeled rows, hidden labels) and their gap: the critic's transfer
    gap."""
    values = dict(probe_scores)
    groups = batch.unlabeled_groups
    if groups and batch.final_values is not None:
        test = critic_quality(batch.final_values[groups].numpy(), truth[groups])
        values.update({f"critic/test/{k}": v for k, v in test.items()})
        for k in ("ece", "brier", "auroc_within"):
            values[f"critic/gap/{k}"] = values[f"critic/test/{k}"] - values[f"critic/probe/{k}"]
    return values


def train_batch_metrics(batch: RolloutBatch, truth: np.ndarray, n_train: int) -> dict[str, float]:
    """Reward quality of the rewards the method trains on (the first n_train samples of each
    unlabeled group), voting and diversity statistics on all samples of the unlabeled groups.
    Empty for a method that trains on labeled questions only."""
    groups = batch.unlabeled_groups
    # the true reward (1 correct, 0 not) of the samples trained on, beside the proxy reward/mean:
    # over the same population as reward/mean (the trained unlabeled rows, when there are any)
    unlabeled_rows = [r for r in batch.rows if not batch.is_labeled(r // batch.n)]
    rows = unlabeled_rows or batch.rows
    gt_mean = float(truth.reshape(-1)[rows].mean()) if rows else float("nan")
    if not groups:
        return {"reward/mean": float(batch.rewards.mean()), "reward/gt_mean": gt_mean,
                "ttt/majority_ratio": float("nan")}
    rewards = batch.rewards.numpy()[groups]
    trained_r, trained_y = rewards[:, :n_train], truth[groups, :n_train]
    clusters = [batch.clusters[i] for i in groups]
    rows = [r for i in groups for r in batch.generation.group(i)]
    return {
        "reward/mean": float(trained_r.mean()),
        "reward/gt_mean": gt_mean,
        "reward/pointbiserial": M.pointbiserial(trained_r, trained_y),
        "reward/auroc": M.auroc(trained_r, trained_y),
        "reward/auroc_within": M.auroc_within(trained_r, trained_y),
        "reward/accuracy": M.reward_accuracy(trained_r, trained_y, batch.reward_threshold),
        "train/accuracy": float(trained_y.mean()),
        "ttt/majority_ratio": M.majority_ratio(clusters),
        "ttt/label_accuracy": M.maj_at_k(clusters, truth[groups]),
        "div/distinct_answers": M.distinct_answers(clusters),
        "div/answer_entropy": M.answer_entropy(clusters),
        "div/distinct_2": M.distinct_2([[batch.generation.texts[r] for r in batch.generation.group(i)] for i in groups]),
        **M.response_lengths([len(batch.generation.token_ids[r]) for r in rows],
                             [batch.generation.finished[r] for r in rows], "train"),
    }
