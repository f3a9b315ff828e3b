"""Metrics (DESIGN section 4) as pure functions of arrays; MLflow keys are in the loop.

Shapes: Q questions, n samples per question. ``correct`` is a bool array [Q, n]; ``rewards`` a
float array [Q, n]; ``clusters`` a list of Q lists of n answer-cluster ids (None: no parseable
answer). A metric that is undefined on its input (one class only, no group with both) is NaN.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

Clusters = Sequence[Sequence[int | None]]


def majority_cluster(cluster_ids: list[int | None]) -> int | None:
    """The most frequent cluster; ties go to the cluster seen first in sampling order (samples are
    drawn i.i.d., so this is a uniformly random tie-break that stays reproducible). None when no
    response has a parseable answer."""
    counts: dict[int, int] = {}
    for c in cluster_ids:
        if c is not None:
            counts[c] = counts.get(c, 0) + 1
    if not counts:
        return None
    best = max(counts.values())
    return next(c for c in cluster_ids if c is not None and counts[c] == best)


def mean_at_k(correct: np.ndarray) -> float:
    """Average correctness over all samples (the paper's mean@k with k = n)."""
    return float(np.asarray(correct, dtype=float).mean())


def pass_at_k(correct: np.ndarray, k: int) -> float:
    """Unbiased pass@k (Chen et al. 2021): mean over questions of 1 - C(n-c, k) / C(n, k)."""
    correct = np.asarray(correct, dtype=bool)
    n = correct.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"pass@k needs 1 <= k <= n={n}, got k={k}")
    values = [1.0 - math.comb(n - int(c), k) / math.comb(n, k) for c in correct.sum(axis=1)]
    return float(np.mean(values))


def majority_correct(clusters: Clusters, correct: np.ndarray) -> np.ndarray:
    """Per question, whether the majority answer cluster is correct [Q] (False if none parses)."""
    out = np.zeros(len(clusters), dtype=bool)
    for q, ids in enumerate(clusters):
        winner = majority_cluster(list(ids))
        if winner is not None:
            out[q] = bool(correct[q][list(ids).index(winner)])
    return out


def maj_at_k(clusters: Clusters, correct: np.ndarray) -> float:
    """Share of questions whose majority-vote answer over the n samples is correct."""
    return float(majority_correct(clusters, correct).mean())


def majority_ratio(clusters: Clusters) -> float:
    """Mean share of a question's samples that fall in its majority cluster."""
    ratios = []
    for ids in clusters:
        counts = Counter(c for c in ids if c is not None)
        ratios.append(max(counts.values()) / len(ids) if counts else 0.0)
    return float(np.mean(ratios))


def distinct_answers(clusters: Clusters) -> float:
    """Mean number of distinct answer clusters per question (unparseable responses excluded)."""
    return float(np.mean([len({c for c in ids if c is not None}) for ids in clusters]))


def answer_entropy(clusters: Clusters) -> float:
    """Mean entropy (nats) of each question's distribution over answer clusters, over its
    parseable responses; 0 for a question with at most one parseable response."""
    values = []
    for ids in clusters:
        counts = np.array(list(Counter(c for c in ids if c is not None).values()), dtype=float)
        if counts.sum() == 0:
            values.append(0.0)
            continue
        p = counts / counts.sum()
        values.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(values))


def distinct_2(texts: Sequence[Sequence[str]]) -> float:
    """Mean over questions of distinct / total whitespace-token bigrams across its samples."""
    values = []
    for group in texts:
        bigrams = [b for t in group for b in zip(t.split(), t.split()[1:])]
        if bigrams:
            values.append(len(set(bigrams)) / len(bigrams))
    return float(np.mean(values)) if values else float("nan")


LENGTH_STATS = ("response_length", "response_length_median", "response_length_p90", "response_length_max",
                "truncation_rate")


def response_lengths(lengths: Sequence[int], finished: Sequence[bool], prefix: str) -> dict[str, float]:
    """Length statistics of a set of responses (tokens) and the share that hit the length limit
    without ending (a reasoning model cut off while thinking has no answer), keyed
    ``{prefix}/{name}`` for the names of LENGTH_STATS: mean, median, 90th percentile, maximum,
    truncation rate. lengths, finished: one entry per response."""
    if len(lengths) == 0:
        return {}
    values = np.asarray(lengths, dtype=float)
    stats = (values.mean(), np.median(values), np.percentile(values, 90), values.max(),
             1.0 - np.mean(np.asarray(finished, dtype=float)))
    return {f"{prefix}/{name}": float(value) for name, value in zip(LENGTH_STATS, stats)}


def question_flips(first: dict[str, float], last: dict[str, float], threshold: float = 0.5) -> list[dict]:
    """Per test question, its sampled accuracy (mean@k) at a first and a last evaluation, the
    change, and whether it flipped: "gained" (below ``threshold`` first, at or above it last),
    "lost" (the reverse) or "". Questions of both evaluations, in the first's order."""
    rows = []
    for question, before in first.items():
        if question in last:
            after = last[question]
            flip = "gained" if before < threshold <= after else "lost" if after < threshold <= before else ""
            rows.append({"question_id": question, "first": before, "last": after, "change": after - before,
                         "flip": flip})
    return rows


def pointbiserial(rewards: np.ndarray, correct: np.ndarray) -> float:
    """Point-biserial correlation between reward and true correctness over all samples (the
    paper's "reward quality"); NaN when either is constant."""
    r, y = np.ravel(rewards).astype(float), np.ravel(correct).astype(float)
    if r.std() == 0 or y.std() == 0:
        return float("nan")
    from scipy.stats import pointbiserialr

    return float(pointbiserialr(y, r).statistic)


def separation_from_pointbiserial(pb, accuracy):
    """Cohen's d of the reward between correct and wrong samples (difference of class means over
    the pooled within-class standard deviation, population moments), recovered exactly from the
    point-biserial correlation pb and the fraction correct p of the same samples:
    d = pb / (sqrt(1 - pb^2) * sqrt(p (1 - p))). Unlike pb, d does not shrink as p nears 0 or 1
    for a reward that separates the classes equally well. Arrays of any one shape; NaN where
    p is 0 or 1 or |pb| is 1."""
    pb, p = np.asarray(pb, dtype=float), np.asarray(accuracy, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        d = pb / (np.sqrt(1 - pb**2) * np.sqrt(p * (1 - p)))
    return np.where(np.isfinite(d), d, np.nan)


def pointbiserial_from_separation(d, accuracy):
    """The inverse of separation_from_pointbiserial: the point-biserial correlation a reward of
    separation d (Cohen's d) shows where a fraction p of the samples is correct,
    d sqrt(p (1 - p)) / sqrt(1 + d^2 p (1 - p))."""
    d, p = np.asarray(d, dtype=float), np.asarray(accuracy, dtype=float)
    spread = d**2 * p * (1 - p)
    return d * np.sqrt(p * (1 - p)) / np.sqrt(1 + spread)


def auroc(rewards: np.ndarray, correct: np.ndarray) -> float:
    """Pooled AUROC of reward as a detector of correct samples; NaN with one class only."""
    y = np.ravel(correct).astype(int)
    if y.min() == y.max():
        return float("nan")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(y, np.ravel(rewards)))


def auroc_within(rewards: np.ndarray, correct: np.ndarray) -> float:
    """AUROC within each question's group, averaged over questions that have both right and
    wrong samples: the only ranking a group-relative update uses."""
    values = [auroc(r, y) for r, y in zip(rewards, correct) if 0 < np.sum(y) < len(y)]
    return float(np.mean(values)) if values else float("nan")


def explained_variance(predicted: np.ndarray, target: np.ndarray) -> float:
    """1 - Var(target - predicted) / Var(target) over all entries (1: perfect, 0: no better than
    the mean, negative: worse); NaN when the target does not vary."""
    predicted, target = np.ravel(predicted).astype(float), np.ravel(target).astype(float)
    spread = target.var()
    return float(1 - (target - predicted).var() / spread) if spread > 0 else math.nan


def reward_accuracy(rewards: np.ndarray, correct: np.ndarray, threshold: float) -> float:
    """Share of samples where ``reward > threshold`` agrees with the truth (NaN without a
    threshold: a reward that is no verdict, such as a confidence score)."""
    if math.isnan(threshold):
        return math.nan
    predicted = np.ravel(rewards) > threshold
    return float((predicted == np.ravel(correct).astype(bool)).mean())


def calibration_bins(prob: np.ndarray, correct: np.ndarray, bins: int = 10) -> list[dict]:
    """Reliability-diagram data: equal-width bins of predicted P(correct) with, per non-empty
    bin, its range, count, mean prediction and observed accuracy."""
    p, y = np.ravel(prob).astype(float), np.ravel(correct).astype(float)
    index = np.minimum((p * bins).astype(int), bins - 1)
    out = []
    for b in range(bins):
        sel = index == b
        if sel.any():
            out.append({"lo": b / bins, "hi": (b + 1) / bins, "count": int(sel.sum()),
                        "confidence": float(p[sel].mean()), "accuracy": float(y[sel].mean())})
    return out


def ece(prob: np.ndarray, correct: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error: sum over bins of (count / total) * |accuracy - confidence|."""
    table = calibration_bins(prob, correct, bins)
    total = sum(row["count"] for row in table)
    if total == 0:
        return float("nan")
    return float(sum(row["count"] / total * abs(row["accuracy"] - row["confidence"]) for row in table))


def brier(prob: np.ndarray, correct: np.ndarray) -> float:
    """Mean squared error of predicted P(correct) against the 0/1 outcome."""
    p, y = np.ravel(prob).astype(float), np.ravel(correct).astype(float)
    return float(np.mean((p - y) ** 2)) if p.size else float("nan")
