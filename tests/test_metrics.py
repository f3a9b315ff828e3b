"""Metrics against hand-computed values."""

import math

import numpy as np
import pytest

from tempo_bench.core import metrics as M

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


def test_separation_is_cohens_d_by_hand_and_inverts():
    # class means 0.8 (correct) and 0.3 (wrong), population sds 0.1 and 0.2, p = 3/5
    correct_r, wrong_r = np.array([0.7, 0.8, 0.9]), np.array([0.1, 0.5])
    r, y = np.concatenate([correct_r, wrong_r]), np.array([1, 1, 1, 0, 0])
    pooled = math.sqrt((3 * correct_r.var() + 2 * wrong_r.var()) / 5)
    d = M.separation_from_pointbiserial(M.pointbiserial(r, y), 3 / 5)
    assert d == pytest.approx((0.8 - 0.3) / pooled)
    assert M.pointbiserial_from_separation(d, 3 / 5) == pytest.approx(M.pointbiserial(r, y))


def test_separation_keeps_still_while_pointbiserial_shrinks_near_all_correct():
    # one reward distribution per class (d = 2), the share of correct samples rising: pb falls, d does not
    rng = np.random.default_rng(0)
    pbs, ds = [], []
    for p in (0.5, 0.9, 0.98):
        y = rng.random(200_000) < p
        r = np.where(y, 2.0, 0.0) + rng.standard_normal(y.size)
        pbs.append(M.pointbiserial(r, y))
        ds.append(float(M.separation_from_pointbiserial(pbs[-1], y.mean())))
    assert pbs[0] > 0.65 and pbs[2] < 0.3  # 0.71 -> 0.27
    assert ds == pytest.approx([2.0, 2.0, 2.0], abs=0.05)
    assert np.isnan(M.separation_from_pointbiserial([0.5, 0.5], [0.0, 1.0])).all()


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
    from tempo_bench.core.stats import mean_ci

    mean, lo, hi = mean_ci([0.2, 0.4, 0.6, 0.8])
    assert mean == pytest.approx(0.5) and 0.2 <= lo < 0.5 < hi <= 0.8
    assert mean_ci([0.3, 0.3]) == (0.3, 0.3, 0.3)
    m, lo, hi = mean_ci([0.7])
    assert m == 0.7 and math.isnan(lo) and math.isnan(hi)


def test_stratified_bootstrap_on_hand_computed_cases():
    from tempo_bench.core.stats import stratified_bootstrap_ci

    # two seeds scoring 0 and 1: resampled means are 0, 0.5, 1 with probabilities 1/4, 1/2, 1/4,
    # so the 95% percentile interval is [0, 1]; a 40% interval is [0.5, 0.5]
    assert stratified_bootstrap_ci([0.0, 1.0]) == (0.5, 0.0, 1.0)
    assert stratified_bootstrap_ci([0.0, 1.0], confidence=0.4) == (0.5, 0.5, 0.5)
    # two tasks (columns) resampled separately: task 0 always 1, task 1 two seeds 0 and 1 ->
    # the mean over tasks takes values 0.5, 0.75, 1 with probabilities 1/4, 1/2, 1/4
    point, low, high = stratified_bootstrap_ci([[1.0, 0.0], [1.0, 1.0]])
    assert (point, low, high) == (0.75, 0.5, 1.0)


def test_probability_of_improvement_hand_computed():
    from tempo_bench.core.stats import (
        probability_of_improvement,
        probability_of_improvement_ci,
    )

    # pairs (x, y): 1 beats 0; 2 beats 0 and ties 2 twice; 3 beats all three -> (1 + 2 + 3) / 9
    assert probability_of_improvement([1, 2, 3], [0, 2, 2]) == pytest.approx(6 / 9)
    assert probability_of_improvement([1, 1], [1, 1]) == 0.5
    assert probability_of_improvement([5, 6], [1, 2]) == 1.0
    p, low, high = probability_of_improvement_ci([5, 6], [1, 2])
    assert (p, low, high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="same tasks"):
        probability_of_improvement([[1, 2]], [[1]])


def test_response_lengths_and_truncation_rate_by_hand():
    stats = M.response_lengths([10, 20, 30, 40, 100], [True, True, False, True, False], "eval")
    assert stats == {"eval/response_length": 40.0, "eval/response_length_median": 30.0,
                     "eval/response_length_p90": 76.0,  # numpy's linear interpolation: 40 + 0.6 * 60
                     "eval/response_length_max": 100.0, "eval/truncation_rate": 0.4}
    assert M.response_lengths([], [], "train") == {}


def test_question_flips_by_hand():
    first = {"a": 0.25, "b": 0.75, "c": 0.5, "d": 0.0}
    last = {"a": 0.5, "b": 0.25, "c": 1.0, "e": 1.0}
    assert M.question_flips(first, last) == [
        {"question_id": "a", "first": 0.25, "last": 0.5, "change": 0.25, "flip": "gained"},
        {"question_id": "b", "first": 0.75, "last": 0.25, "change": -0.5, "flip": "lost"},
        {"question_id": "c", "first": 0.5, "last": 1.0, "change": 0.5, "flip": ""},
    ]  # d and e are in one evaluation only
