"""The policy-gradient maths against naive per-element loops."""

import math

import pytest
import torch

from tempo_bench.core.algos import (
    group_normalized_advantages,
    gspo_loss,
    masked_mean,
    masked_whiten,
    ppo_clipped_loss,
    token_entropy,
    token_logprobs,
)


def test_group_normalized_advantages_matches_loop():
    rewards = torch.tensor([[1.0, 0.0, 0.0, 1.0], [0.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    got = group_normalized_advantages(rewards, eps=1e-6)
    for g in range(3):
        row = rewards[g].tolist()
        mean = sum(row) / 4
        std = math.sqrt(sum((r - mean) ** 2 for r in row) / 3)  # sample std
        for j in range(4):
            assert math.isclose(got[g, j].item(), (row[j] - mean) / (std + 1e-6), rel_tol=1e-5, abs_tol=1e-6)
    assert torch.all(got[2] == 0)  # unanimous group: no signal
    # hand-computed: [1,0,0,1] -> mean .5, sample std sqrt(1/3) -> +-0.866
    assert math.isclose(got[0, 0].item(), 0.5 / math.sqrt(1 / 3), rel_tol=1e-4)


def test_group_of_one_has_zero_advantage():
    assert torch.equal(group_normalized_advantages(torch.tensor([[1.0], [0.0]])), torch.zeros(2, 1))


def test_masked_mean_and_whiten():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    assert math.isclose(masked_mean(x, mask).item(), (1 + 2 + 3 + 4 + 5) / 5)
    assert torch.allclose(masked_mean(x, mask, dim=1), torch.tensor([1.5, 4.0]))
    w = masked_whiten(x, mask)
    vals = [1.0, 2.0, 3.0, 4.0, 5.0]
    mean, var = 3.0, sum((v - 3.0) ** 2 for v in vals) / 5
    assert math.isclose(w[0, 0].item(), (1 - mean) / math.sqrt(var), rel_tol=1e-5)
    assert w[0, 2].item() == 0.0


def test_token_logprobs_and_entropy_match_loop():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5)
    targets = torch.randint(5, (2, 3))
    lp, ent = token_logprobs(logits, targets), token_entropy(logits)
    for b in range(2):
        for t in range(3):
            z = [math.exp(v) for v in logits[b, t].tolist()]
            p = [v / sum(z) for v in z]
            assert math.isclose(lp[b, t].item(), math.log(p[targets[b, t]]), rel_tol=1e-5)
            assert math.isclose(ent[b, t].item(), -sum(q * math.log(q) for q in p), rel_tol=1e-5)


@pytest.mark.parametrize("chunk_entries", [2 * 5, 3 * 2 * 5, 10**6])  # one position, 3, all 7 at once
def test_chunked_logprobs_and_entropy_equal_the_whole_ones_with_their_gradient(chunk_entries):
    from tempo_bench.core.algos import token_logprobs_entropy

    torch.manual_seed(0)
    logits = torch.randn(2, 7, 5, dtype=torch.float64).to(torch.bfloat16).requires_grad_()
    targets = torch.randint(5, (2, 7))
    weights = torch.randn(2, 7)
    whole = token_logprobs(logits.float() / 0.7, targets)
    (whole * weights).sum().backward()
    expected_grad, logits.grad = logits.grad.clone(), None
    logp, ent = token_logprobs_entropy(logits, targets, temperature=0.7, chunk_entries=chunk_entries)
    (logp * weights).sum().backward()
    assert torch.equal(logp, whole) and not ent.requires_grad  # per position: the same arithmetic
    assert torch.equal(ent, token_entropy(logits.detach().float() / 0.7))
    assert torch.equal(logits.grad, expected_grad)
    assert token_logprobs_entropy(logits, targets, entropy=False)[1] is None


def _naive_ppo(logp, old, adv, mask, lo, hi):
    total, count = 0.0, 0
    for b in range(logp.shape[0]):
        for t in range(logp.shape[1]):
            if mask[b, t]:
                r = math.exp(logp[b, t] - old[b, t])
                a = adv[b] if adv.dim() == 1 else adv[b, t]
                total += -min(r * a, min(max(r, 1 - lo), 1 + hi) * a)
                count += 1
    return total / count


def test_ppo_clipped_loss_matches_loop_and_gradient_of_on_policy_batch():
    torch.manual_seed(1)
    logp = torch.randn(3, 4) * 0.3 - 1
    old = logp + torch.randn(3, 4) * 0.3
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float)
    for adv in (torch.tensor([1.0, -0.5, 2.0]), torch.randn(3, 4)):
        loss, stats = ppo_clipped_loss(logp, old, adv, mask, 0.2, 0.28)
        assert math.isclose(loss.item(), _naive_ppo(logp, old, adv, mask, 0.2, 0.28), rel_tol=1e-5)
        assert 0 <= stats["clipfrac"].item() <= 1
    # on-policy (old == logp): the gradient is -A / num_tokens on each real token
    x = logp.clone().requires_grad_(True)
    adv = torch.tensor([1.0, -0.5, 2.0])
    loss, _ = ppo_clipped_loss(x, x.detach(), adv, mask, 0.2, 0.28)
    loss.backward()
    expected = -adv.unsqueeze(1) * mask / mask.sum()
    assert torch.allclose(x.grad, expected, atol=1e-6)


def test_gspo_loss_matches_loop():
    torch.manual_seed(2)
    logp = torch.randn(3, 4) * 0.01 - 1
    old = logp + torch.randn(3, 4) * 0.001
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.float)
    adv = torch.tensor([1.0, -0.5, 2.0])
    lo, hi = 3e-4, 5e-4
    loss, _ = gspo_loss(logp, old, adv, mask, lo, hi)
    naive = 0.0
    for b in range(3):
        idx = [t for t in range(4) if mask[b, t]]
        s = math.exp(sum(logp[b, t].item() - old[b, t].item() for t in idx) / len(idx))
        per_seq = -min(s * adv[b].item(), min(max(s, 1 - lo), 1 + hi) * adv[b].item())
        naive += per_seq  # every token of a sequence carries the same value
    assert math.isclose(loss.item(), naive / 3, rel_tol=1e-5)


def test_gspo_gradient_is_sequence_level():
    """Unclipped, d loss / d logp_t = -A_i * s_i / (|y_i| * B) for each token of sequence i."""
    logp = torch.tensor([[-1.0, -2.0, -0.5], [-0.3, -0.2, 0.0]], requires_grad=True)
    old = logp.detach() - 0.0
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    adv = torch.tensor([1.0, -1.0])
    loss, _ = gspo_loss(logp, old, adv, mask, 0.2, 0.2)
    loss.backward()
    expected = torch.tensor([[-1 / 3, -1 / 3, -1 / 3], [0.5, 0.5, 0.0]]) / 2
    assert torch.allclose(logp.grad, expected, atol=1e-6)
