"""Statistics over seeds, as rliable computes them (Agarwal et al., 2021): the mean with a
stratified-bootstrap confidence interval, and the probability of improvement of one method over
another. Scores are arrays [runs, tasks]: runs (seeds) are resampled with replacement within each
task independently (the strata); with one task this is the plain percentile bootstrap over seeds.
"""

from __future__ import annotations

import numpy as np


def _as_scores(scores) -> np.ndarray:
    x = np.asarray(scores, dtype=float)
    return x[:, None] if x.ndim == 1 else x


def stratified_bootstrap_ci(scores, statistic=None, confidence: float = 0.95, n_resamples: int = 10_000,
                            seed: int = 0) -> tuple[float, float, float]:
    """(point, low, high) of ``statistic`` (default: the mean over runs and tasks) of scores
    [runs, tasks] (or [runs]), with a percentile interval from resampling runs within each task."""
    x = _as_scores(scores)
    point = float(np.mean(x)) if statistic is None else statistic(x)
    runs, tasks = x.shape
    if runs < 2:
        return point, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    index = rng.integers(0, runs, size=(n_resamples, runs, tasks))  # per task, its own resample
    resampled = np.take_along_axis(np.broadcast_to(x, (n_resamples, runs, tasks)), index, axis=1)
    stats = resampled.mean(axis=(1, 2)) if statistic is None else np.array([statistic(r) for r in resampled])
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return point, float(low), float(high)


def mean_ci(values, confidence: float = 0.95, n_resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """(mean, low, high) over seeds of one task, ignoring missing and non-finite values. With fewer
    than 2 values the interval is (nan, nan); with identical values it is that value."""
    x = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    if x.size == 0:
        return float("nan"), float("nan"), float("nan")
    return stratified_bootstrap_ci(x, confidence=confidence, n_resamples=n_resamples, seed=seed)


def probability_of_improvement(x, y) -> float:
    """P(X > Y) + P(X = Y) / 2 for a random run of method X and one of method Y, averaged over
    tasks: scores [runs_x, tasks] and [runs_y, tasks] (or 1-D). 0.5 means no difference."""
    x, y = _as_scores(x), _as_scores(y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must cover the same tasks, got {x.shape[1]} and {y.shape[1]}")
    per_task = []
    for t in range(x.shape[1]):
        a, b = x[:, t][:, None], y[:, t][None, :]
        per_task.append(float(np.mean((a > b) + 0.5 * (a == b))))
    return float(np.mean(per_task))


def probability_of_improvement_ci(x, y, confidence: float = 0.95, n_resamples: int = 2_000,
                                  seed: int = 0) -> tuple[float, float, float]:
    """(P(X > Y), low, high): both methods' runs resampled within each task."""
    x, y = _as_scores(x), _as_scores(y)
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(n_resamples):
        xs = np.stack([x[rng.integers(0, len(x), len(x)), t] for t in range(x.shape[1])], axis=1)
        ys = np.stack([y[rng.integers(0, len(y), len(y)), t] for t in range(y.shape[1])], axis=1)
        stats.append(probability_of_improvement(xs, ys))
    alpha = (1 - confidence) / 2
    low, high = np.quantile(stats, [alpha, 1 - alpha])
    return probability_of_improvement(x, y), float(low), float(high)
