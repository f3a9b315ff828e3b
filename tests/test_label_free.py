"""The label-free methods (self-certainty, entropy minimisation, random reward) and the run
diagnostics researchers report (ground-truth reward, explained variance, collapse, best vs last)."""

import math

import numpy as np
import pytest
import torch
from batches import advantage_phase, make_batch
from tempo_bench.baselines.label_free import EntropyMin, RandomReward, SelfCertainty

from tempo_bench.core.confidence import response_confidence, token_self_certainty
from tempo_bench.core.errors import ConfigError
from tempo_bench.core.metrics import explained_variance
from tempo_bench.experiments.results import best_step, collapse_step


def naive_self_certainty(probs):
    """KL(uniform || p) written out: sum_j (1/V) log((1/V) / p_j)."""
    v = len(probs)
    return sum((1 / v) * math.log((1 / v) / p) for p in probs)


def test_self_certainty_is_zero_for_uniform_and_matches_the_definition():
    uniform = torch.zeros(1, 1, 7)
    assert token_self_certainty(uniform).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.tensor([[[2.0, 0.5, -1.0, 0.0]]])
    probs = torch.softmax(logits, -1).flatten().tolist()
    assert token_self_certainty(logits).item() == pytest.approx(naive_self_certainty(probs), rel=1e-5)


def test_entropy_is_zero_for_one_hot_and_responses_average_their_tokens():
    one_hot = torch.full((1, 1, 5), -1e4)
    one_hot[..., 2] = 1e4
    mask = torch.tensor([[1.0]])
    assert response_confidence(one_hot, mask)["entropy"].item() == pytest.approx(0.0, abs=1e-6)
    # two tokens, a uniform one and a peaked one, then padding that must not count
    peaked = torch.tensor([3.0, 0.0, 0.0, 0.0])
    probs = torch.softmax(peaked, -1).tolist()
    logits = torch.stack([torch.zeros(4), peaked, torch.tensor([9.0, 0.0, 0.0, 0.0])]).unsqueeze(0)
    got = response_confidence(logits, torch.tensor([[1.0, 1.0, 0.0]]))
    entropy = -sum(q * math.log(q) for q in probs)
    assert got["entropy"].item() == pytest.approx((math.log(4) + entropy) / 2, rel=1e-5)
    assert got["self_certainty"].item() == pytest.approx((0.0 + naive_self_certainty(probs)) / 2, rel=1e-5)


@pytest.mark.parametrize("chunk_entries", [1, 10**9])
def test_chunked_confidence_equals_the_whole_and_the_policy_scores_its_responses_alike(chunk_entries):
    from tempo_bench.config import LoraConfig, ModelConfig
    from tempo_bench.core.confidence import response_confidence_chunked
    from tempo_bench.policy.batch import make_train_batch, response_logits
    from tempo_bench.policy.model import load_policy
    from tempo_bench.policy.scoring import confidence_scores

    torch.manual_seed(0)
    logits, mask = torch.randn(3, 5, 7), torch.tensor([[1.0] * 5, [1.0] * 2 + [0.0] * 3, [1.0] * 4 + [0.0]])
    whole = response_confidence(logits / 0.7, mask)
    chunked = response_confidence_chunked(logits, mask, 0.7, chunk_entries=chunk_entries)
    assert all(torch.allclose(chunked[k], whole[k], rtol=1e-6, atol=1e-7) for k in whole)
    # the policy's scores of its own responses (lean path: hidden states and head) against its logits
    policy = load_policy(ModelConfig(), LoraConfig())
    batch = make_train_batch([[5, 6, 7], [8, 9]], [[10, 11, 12], [13]], pad_id=0)
    with torch.no_grad():
        reference = response_confidence(response_logits(policy, batch).float() / 0.7, batch.mask)
    scores = confidence_scores(policy, batch, 0.7, micro_rows=None)
    assert all(torch.allclose(scores[k], reference[k], rtol=1e-5, atol=1e-6) for k in reference)


def test_confidence_rewards_order_samples_as_computed_by_hand():
    batch = make_batch([["1", "2", "3"], ["4", "5", "6"]])
    batch.confidence = {"self_certainty": torch.tensor([[0.3, 0.1, 0.2], [1.0, 1.0, 4.0]]),
                        "entropy": torch.tensor([[0.5, 0.2, 0.9], [0.1, 0.3, 0.2]])}
    certainty = SelfCertainty(SelfCertainty.Options(), n_train=3)
    batch.rewards = certainty.rewards(batch).rewards
    adv = advantage_phase(batch, certainty).reshape(2, 3)
    # group-normalised: (r - mean) / std within each group
    assert adv[0].argsort().tolist() == [1, 2, 0] and adv[0, 2] == pytest.approx(0.0, abs=1e-6)
    assert adv[1, 0] == pytest.approx(adv[1, 1]) and adv[1, 2] > 0
    entropy = EntropyMin(EntropyMin.Options(), n_train=3)
    batch.rewards = entropy.rewards(batch).rewards
    assert batch.rewards[0].tolist() == pytest.approx([-0.5, -0.2, -0.9])
    assert advantage_phase(batch, entropy).reshape(2, 3)[0].argmax().item() == 1  # the lowest entropy
    assert math.isnan(entropy.rewards(batch).threshold)  # a confidence is no verdict


def test_confidence_methods_need_the_scores():
    with pytest.raises(ValueError, match="confidence scores"):
        SelfCertainty(SelfCertainty.Options(), n_train=3).rewards(make_batch([["1", "2", "3"]]))


def test_random_reward_is_seeded_by_run_seed_and_step():
    def draws(seed, step):
        batch = make_batch([["1"] * 8] * 4)
        batch.step = step
        return RandomReward(RandomReward.Options(), n_train=8, seed=seed).rewards(batch).rewards

    assert torch.equal(draws(0, 3), draws(0, 3))
    assert not torch.equal(draws(0, 3), draws(0, 4)) and not torch.equal(draws(0, 3), draws(1, 3))
    rewards = torch.cat([draws(0, s) for s in range(1, 40)])
    assert set(rewards.unique().tolist()) == {0.0, 1.0} and abs(rewards.mean().item() - 0.5) < 0.03


def test_method_options_out_of_range_are_config_errors():
    from tempo_bench.config import load_config

    with pytest.raises(ConfigError, match="methods.self_certainty.temperature"):
        load_config("toy-smoke", ["method=self_certainty", "methods.self_certainty.temperature=-1"])
    with pytest.raises(ConfigError, match="methods.random_reward.p"):
        load_config("toy-smoke", ["method=random_reward", "methods.random_reward.p=1.5"])
    with pytest.raises(ConfigError, match="eval.collapse_tolerance"):
        load_config("toy-smoke", ["eval.collapse_tolerance=1.5"])


def test_explained_variance_by_hand():
    target = np.array([1.0, -1.0, 1.0, -1.0])
    assert explained_variance(target, target) == pytest.approx(1.0)
    assert explained_variance(np.zeros(4), target) == pytest.approx(0.0)
    pred = np.array([0.5, -0.5, 0.5, 0.5])  # residuals .5 -.5 .5 -1.5: mean -.25, var .6875; var(target) 1
    assert explained_variance(pred, target) == pytest.approx(1 - 0.6875 / 1.0)
    assert math.isnan(explained_variance(np.zeros(3), np.ones(3)))  # one outcome only


def test_collapse_step_and_best_step_on_trajectories():
    # step 0 at .50; tolerance .05: below .45 from step 20 on, and for the rest of the run
    assert collapse_step({0: 0.50, 10: 0.52, 20: 0.40, 30: 0.30, 40: 0.44}, 0.05) == 20
    # a dip that recovers is no collapse; the end above the line is no collapse
    assert collapse_step({0: 0.50, 10: 0.40, 20: 0.47, 30: 0.46}, 0.05) is None
    assert collapse_step({0: 0.50, 10: 0.60}, 0.05) is None
    assert collapse_step({0: 0.50, 10: 0.40, 20: 0.46, 30: 0.41}, 0.05) == 30
    assert best_step({0: 0.50, 10: 0.62, 20: 0.62, 30: 0.55}) == (10, 0.62)  # the first of ties; step 0 excluded
    assert best_step({0: 0.50}) == (None, math.nan) or math.isnan(best_step({0: 0.50})[1])
