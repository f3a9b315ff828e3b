"""Metrics against hand-computed values."""

import math

import numpy as np
import pytest

from tempo_bench import metrics as M

CORRECT = np.array([[1, 0, 0, 1], [0, 0, 0, 0], [1, 1, 1, 0]], dtype=bool)


def test_mean_at_k():
    assert M.mean_at_k(CORRECT) == pytest.approx(5 / 12)


def test_pass_at_k_unbiased_estimator_by_hand():
    # n=4. q0: c=2 -> pass@1 = .5, pass@2 = 1 - C(2,2)/C(4,2) = 5/6; q1: 0; q2: c=3 -> .75, 1
    assert M.pass_at_k(CORRECT, 1) == pytest.approx((0.5 + 0 + 0.75) / 3)
    assert M.pass_at_k(CORRECT, 2) == pytest.approx((5 / 6 + 0 + 1) / 3)
    assert M.pass_at_k(CORRECT, 4) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        M.pass_at_k(CORRECT, 5)


def test_majority_metrics():
    clusters = [[0, 1, 1, 0], [0, 0, None, 1], [None, None, None, None]]
    correct = np.array([[1, 0, 0, 1], [0, 0, 0, 1], [0, 0, 0, 0]], dtype=bool)
    # q0 tie 0 vs 1 -> first seen (0) which is correct; q1 majority 0 wrong; q2 no answer
    assert M.maj_at_k(clusters, correct) == pytest.approx(1 / 3)
    assert M.majority_ratio(clusters) == pytest.approx((2 / 4 + 2 / 4 + 0) / 3)
    assert M.distinct_answers(clusters) == pytest.approx((2 + 2 + 0) / 3)
    h0 = math.log(2)
    h1 = -(2 / 3 * math.log(2 / 3) + 1 / 3 * math.log(1 / 3))
    assert M.answer_entropy(clusters) == pytest.approx((h0 + h1 + 0) / 3)


def test_distinct_2():
    texts = [["a b c", "a b d"], ["x y", "x y"]]
    # q0 bigrams: ab bc ab bd -> 3 distinct of 4; q1: xy xy -> 1 of 2
    assert M.distinct_2(texts) == pytest.approx((3 / 4 + 1 / 2) / 2)


def test_pointbiserial_equals_pearson_and_nan_when_constant():
    r = np.array([0.9, 0.1, 0.8, 0.3, 0.5])
    y = np.array([1, 0, 1, 0, 1])
    assert M.pointbiserial(r, y) == pytest.approx(np.corrcoef(r, y)[0, 1])
    assert math.isnan(M.pointbiserial(np.ones(5), y))
    assert math.isnan(M.pointbiserial(r, np.ones(5)))


def test_auroc_pooled_and_within():
    rewards = np.array([[0.9, 0.2, 0.5], [0.1, 0.8, 0.3], [0.5, 0.5, 0.5]])
    correct = np.array([[1, 0, 0], [1, 0, 1], [1, 1, 1]], dtype=bool)
    # within q0: correct .9 beats .2 and .5 -> 1.0; q1: correct {.1,.3} vs wrong .8 -> 0; q2 skipped
    assert M.auroc_within(rewards, correct) == pytest.approx(0.5)
    # pooled by hand: pairs (pos, neg) with pos > neg counted, ties .5
    pos = rewards[correct]
    neg = rewards[~correct]
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    assert M.auroc(rewards, correct) == pytest.approx(wins / (len(pos) * len(neg)))
    assert math.isnan(M.auroc(rewards, np.ones_like(correct)))
    assert math.isnan(M.auroc_within(rewards[2:], correct[2:]))


def test_reward_accuracy():
    rewards = np.array([1.0, 0.0, 1.0, 0.0])
    correct = np.array([1, 1, 0, 0], dtype=bool)
    assert M.reward_accuracy(rewards, correct, 0.5) == pytest.approx(0.5)


def test_ece_brier_and_reliability_bins_by_hand():
    prob = np.array([0.05, 0.15, 0.85, 0.95, 0.9])
    correct = np.array([0, 1, 1, 1, 0], dtype=bool)
    bins = M.calibration_bins(prob, correct, bins=10)
    assert [(b["lo"], b["count"]) for b in bins] == [(0.0, 1), (0.1, 1), (0.8, 1), (0.9, 2)]
    # |acc - conf| per bin weighted by count: .05, .85, .15, 2 * |.5 - .925|
    assert M.ece(prob, correct) == pytest.approx((0.05 + 0.85 + 0.15 + 2 * 0.425) / 5)
    assert M.brier(prob, correct) == pytest.approx(np.mean((prob - correct) ** 2))


def test_mean_ci_bootstrap():
    from tempo_bench.stats import mean_ci

    mean, lo, hi = mean_ci([0.2, 0.4, 0.6, 0.8])
    assert mean == pytest.approx(0.5) and 0.2 <= lo < 0.5 < hi <= 0.8
    assert mean_ci([0.3, 0.3]) == (0.3, 0.3, 0.3)
    m, lo, hi = mean_ci([0.7])
    assert m == 0.7 and math.isnan(lo) and math.isnan(hi)
