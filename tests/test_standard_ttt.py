"""Majority-vote rewards of standard TTT on constructed batches."""

import pytest
import torch
from batches import advantage_phase, make_batch
from tempo_bench.baselines.standard_ttt import StandardTTT


def test_majority_gets_one_minority_zero_with_equivalent_forms():
    method = StandardTTT(StandardTTT.Options(n_vote=6), n_train=4)
    assert method.samples_per_prompt() == 6
    batch = make_batch([["12", "0.5", "12.0", "\\frac{1}{2}", "1/2", "7"], ["3", "3", "4", "4", "5", None]])
    rewards = method.rewards(batch).rewards
    # group 0: {12, 12.0} x2, {0.5, 1/2 forms} x3 -> the half cluster wins
    assert rewards[0].tolist() == [0, 1, 0, 1, 1, 0]
    # group 1: tie 3 vs 4 -> first seen (3); unparseable gets 0
    assert rewards[1].tolist() == [1, 1, 0, 0, 0, 0]
    # advantages cover only the n_train=4 trained samples, group-normalised
    batch.rewards = rewards
    rows = method.train_rows(batch)
    assert rows == [0, 1, 2, 3, 6, 7, 8, 9]
    adv = advantage_phase(batch, method, rows).reshape(2, 4)
    assert torch.allclose(adv.mean(dim=1), torch.zeros(2), atol=1e-6)
    assert adv[0, 1] > 0 > adv[0, 0]


def test_no_parseable_answer_gives_no_signal():
    method = StandardTTT(StandardTTT.Options(), n_train=3)
    batch = make_batch([[None, None, None]])
    rewards = method.rewards(batch).rewards
    assert rewards.tolist() == [[0, 0, 0]]
    batch.rewards = rewards
    assert torch.all(advantage_phase(batch, method, [0, 1, 2]) == 0)


def test_n_vote_below_n_train_is_an_error():
    with pytest.raises(ValueError, match=r"n_vote \(2\) must be >= rollout.n \(4\)"):
        StandardTTT(StandardTTT.Options(n_vote=2), n_train=4)
