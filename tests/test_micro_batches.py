"""Gradient accumulation over micro-batches reproduces the whole-batch update (policy and
critic), so micro_batch_rows is a memory setting, not a change of algorithm."""

import copy

import pytest
import torch

from tempo_bench.config import CriticConfig, LoraConfig, ModelConfig, TrainConfig
from tempo_bench.critic.model import Critic
from tempo_bench.policy.batch import generation_batch, model_inputs
from tempo_bench.policy.model import load_policy, load_tokenizer, trainable_parameters
from tempo_bench.policy.update import policy_update
from tempo_bench.rollout import SamplingParams, get_backend


@pytest.fixture(scope="module")
def rollouts():
    tokenizer = load_tokenizer("toy")
    policy = load_policy(ModelConfig(), LoraConfig())
    torch.manual_seed(0)
    gen = get_backend("hf")(policy, tokenizer).generate(
        ["Q:347+285\n", "Q:12+9\n", "Q:999+1\n"], SamplingParams(n=4, temperature=1.0, max_new_tokens=60))
    return policy, generation_batch(gen, tokenizer.pad_token_id)


@pytest.mark.parametrize("loss,minibatches", [("ppo", 1), ("gspo", 2)])
def test_policy_micro_batches_equal_whole_batch(rollouts, loss, minibatches):
    policy, batch = rollouts
    advantages = torch.linspace(-1.5, 1.5, batch.input_ids.shape[0])
    results = []
    longest = int(batch.attention.sum(1).max())
    for micro, tokens in ((None, None), (5, None), (None, 3 * longest)):  # rows; tokens (packs 3+ rows)
        model = copy.deepcopy(policy)
        # SGD: the parameter change is the gradient itself (Adam would amplify float noise in
        # near-zero gradients)
        optimizer = torch.optim.SGD(trainable_parameters(model), lr=1.0)
        cfg = TrainConfig(loss=loss, minibatches=minibatches, micro_batch_rows=micro, micro_batch_tokens=tokens,
                          clip_low=3e-4, clip_high=5e-4)
        stats = policy_update(model, optimizer, batch, advantages, cfg, temperature=1.0)
        results.append((stats, [p.detach().clone() for p in trainable_parameters(model)]))
    (whole, a), *parts = results
    assert any(not torch.equal(x, y) for x, y in zip(a, trainable_parameters(policy)))  # it did update
    for micro, b in parts:
        assert all(torch.allclose(x, y, atol=1e-6) for x, y in zip(a, b))
        assert micro["loss"] == pytest.approx(whole["loss"], abs=1e-5)
        assert micro["grad_norm"] == pytest.approx(whole["grad_norm"], rel=1e-4)


def test_micro_batches_by_tokens_pack_rows_by_hand():
    from tempo_bench.policy.batch import micro_batches

    lengths = torch.tensor([5, 2, 9, 3, 4, 20])
    # ascending: rows 1 (2), 3 (3), 4 (4), 0 (5), 2 (9), 5 (20); budget 12: [1, 3, 4] (3 x 4 = 12),
    # then 0 alone? 0 and 2: 2 x 9 = 18 > 12 -> [0], [2], [5] (20 > 12: alone)
    parts = micro_batches(torch.arange(6), None, lengths, tokens=12)
    assert [p.tolist() for p in parts] == [[1, 3, 4], [0], [2], [5]]
    # a subset of rows, and a budget that holds everything
    assert [p.tolist() for p in micro_batches(torch.tensor([2, 0]), None, lengths, tokens=100)] == [[0, 2]]


def test_critic_micro_batches_equal_whole_batch(rollouts):
    _, batch = rollouts
    targets = torch.tensor([1.0, -1.0] * 6)
    results = []
    for micro in (None, 5):
        torch.manual_seed(0)  # the same fresh value head
        critic = Critic.from_pretrained("toy", CriticConfig(lr=1e-3, micro_batch_rows=micro))
        stats = critic.fit(batch, targets, torch.ones(12), epochs=2, cliprange_value=0.5, minibatch_rows=8,
                           generator=torch.Generator().manual_seed(0))
        results.append((stats, critic.score(batch)[1]))
    (whole, a), (micro, b) = results
    assert torch.allclose(a, b, atol=1e-5)
    assert micro["critic/value_loss"] == pytest.approx(whole["critic/value_loss"], abs=1e-6)


def test_right_padded_batches_need_no_attention_mask(rollouts):
    """model_inputs drops the mask of right-padded training batches (the causal-attention fast
    path): policy logits and critic values of every real token equal the masked pass's."""
    policy, batch = rollouts
    real = batch.attention.bool()
    assert (~real).any(), "the batch must have padding for this test to mean anything"
    torch.manual_seed(0)
    critic = Critic.from_pretrained("toy", CriticConfig())
    for model, read in ((policy, lambda out: out.logits), (critic.model, lambda out: out.logits)):
        with torch.no_grad():
            masked = read(model(input_ids=batch.input_ids, attention_mask=batch.attention))
            unmasked = read(model(**model_inputs(batch, "cpu")))
        assert torch.allclose(masked[real], unmasked[real], atol=1e-6, rtol=0)


def test_a_non_finite_micro_batch_loss_stops_the_step_before_the_optimiser_moves():
    """The finiteness of the losses is read once, after the last backward pass (no host sync per
    micro-batch): a NaN in the second of three micro-batches still stops the step, weights unmoved."""
    from tempo_bench.policy.batch import accumulated_step

    weight = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    optimizer = torch.optim.SGD([weight], lr=1.0)
    seen = []

    def loss_of(rows):
        seen.append(int(rows[0]))
        scale = float("nan") if int(rows[0]) == 1 else 1.0
        return (weight * scale).sum(), 1.0, {"entropy": weight.sum().detach()}

    with pytest.raises(FloatingPointError, match="policy loss is not finite"):
        accumulated_step(optimizer, [torch.tensor([0]), torch.tensor([1]), torch.tensor([2])], loss_of,
                         3.0, 1.0, "policy loss")
    assert seen == [0, 1, 2] and weight.tolist() == [1.0, 2.0]
    stats, _ = accumulated_step(optimizer, [torch.tensor([0]), torch.tensor([2])], loss_of, 2.0, 1e9,
                                "policy loss")
    assert stats == {"loss": 3.0, "entropy": 3.0} and weight.tolist() == [0.0, 1.0]  # float statistics, one step
