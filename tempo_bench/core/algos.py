"""Policy-gradient maths as pure tensor functions (tested against naive loops in tests/).

Shapes: B sequences (rows), T response tokens, V vocabulary; G prompt groups of n samples each
(B = G * n). ``mask`` [B, T] is 1.0 on real response tokens and 0.0 on padding.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over positions where ``mask`` is 1 (over ``dim``, or all). Empty -> 0."""
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """(x - mean) / std over the masked positions (population std); padding stays 0."""
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return (x - mean) * torch.rsqrt(var + eps) * mask


def group_normalized_advantages(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """GRPO advantages: (r - mean_group) / (std_group + eps).

    rewards: [G, n] -> [G, n]. The std is the sample std (as verl / TTRL); with n == 1 there is no
    group to compare against and the advantage is 0."""
    if rewards.shape[1] == 1:
        return torch.zeros_like(rewards)
    mean = rewards.mean(dim=1, keepdim=True)
    std = rewards.std(dim=1, keepdim=True)
    return (rewards - mean) / (std + eps)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log p(target_t) under ``logits``: [B, T, V], [B, T] -> [B, T]."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def token_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of each next-token distribution: [B, T, V] -> [B, T]."""
    return entropy_of_logp(torch.log_softmax(logits.float(), dim=-1))


def entropy_of_logp(logp: torch.Tensor) -> torch.Tensor:
    """Entropy of distributions given as log-probabilities: [..., V] -> [...]."""
    return -(logp.exp() * logp).sum(-1)


# float32 entries of one chunk of logits in token_logprobs_entropy (2^26: 256 MiB), so that a
# 151,936-entry vocabulary is never whole in float32 for more than ~440 positions at once
CHUNK_ENTRIES = 1 << 26


def position_chunks(rows: int, width: int, vocab: int, chunk_entries: int = CHUNK_ENTRIES) -> list[slice]:
    """The positions 0..width-1 of ``rows`` rows as slices of at most ``chunk_entries`` logits each
    (at least one position: a single position of many rows can exceed it)."""
    step = max(1, chunk_entries // max(1, rows * vocab))
    return [slice(start, start + step) for start in range(0, width, step)]


def _chunk_stats(inputs: torch.Tensor, targets: torch.Tensor, temperature: float, project, entropy: bool):
    logp_all = torch.log_softmax(project(inputs).float() / temperature, dim=-1)
    logp = logp_all.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    if not entropy:
        return logp, None
    with torch.no_grad():
        return logp, entropy_of_logp(logp_all)


def token_logprobs_entropy(inputs: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0,
                           entropy: bool = True, project=None, vocab: int | None = None,
                           chunk_entries: int = CHUNK_ENTRIES):
    """log p(target_t) at ``temperature`` and (detached) the entropy of each next-token
    distribution, over chunks of positions: [B, T, D], [B, T] -> ([B, T], [B, T] or None).

    ``inputs`` are logits (D = V, any float dtype), or with ``project`` (e.g. a language-model
    head, [..., D] -> [..., V]; ``vocab`` = V) the hidden states it maps to logits. The values are
    those of token_logprobs(logits.float() / temperature, targets) and token_entropy, but the
    logits (with ``project``) and their float32 log-softmax exist for one chunk of B x c positions
    at a time (B * c * V <= chunk_entries), in the forward pass and again, recomputed, in the
    backward pass (each chunk is checkpointed): nothing of vocabulary size outlives its chunk."""
    from torch.utils.checkpoint import checkpoint

    project = project or (lambda x: x)
    logps, entropies = [], []
    for cols in position_chunks(*targets.shape, vocab or inputs.shape[-1], chunk_entries):
        part, goal = inputs[:, cols], targets[:, cols]
        if torch.is_grad_enabled() and part.requires_grad:
            logp, ent = checkpoint(_chunk_stats, part, goal, temperature, project, entropy, use_reentrant=False)
        else:
            logp, ent = _chunk_stats(part, goal, temperature, project, entropy)
        logps.append(logp)
        entropies.append(ent)
    return torch.cat(logps, dim=1), torch.cat(entropies, dim=1) if entropy else None


def _broadcast_advantages(advantages: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return advantages.unsqueeze(-1).expand_as(like) if advantages.dim() == 1 else advantages


def ppo_clipped_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Token-level PPO clipped surrogate, averaged over all response tokens of the batch.

    logp, old_logp, mask: [B, T]; advantages: [B] (one per sequence) or [B, T].
    loss_t = -min(r_t A_t, clip(r_t, 1 - clip_low, 1 + clip_high) A_t), r_t = exp(logp - old_logp).
    Returns (loss, stats) with stats clipfrac and approx_kl (k3 estimator), detached."""
    adv = _broadcast_advantages(advantages, logp)
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    loss = masked_mean(-torch.minimum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped < unclipped).float(), mask),
            "approx_kl": masked_mean(ratio - 1 - log_ratio, mask),
        }
    return loss, stats


def gspo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_low: float,
    clip_high: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """GSPO (Zheng et al. 2025), token form: the ratio of a sequence is the geometric mean of its
    token ratios, s_i = exp(mean_t(logp - old_logp)); each token carries
    s_i,t = sg[s_i] * p_t / sg[p_t] so the gradient is the sequence ratio's, spread over tokens.
    loss = mean_i mean_t -min(s_i,t A_i,t, clip(s_i,t, 1 - clip_low, 1 + clip_high) A_i,t).

    Shapes as :func:`ppo_clipped_loss`. The paper's defaults are clip_low 3e-4, clip_high 5e-4."""
    adv = _broadcast_advantages(advantages, logp)
    seq_log_ratio = masked_mean(logp - old_logp, mask, dim=1)  # [B]
    token_log_ratio = seq_log_ratio.detach().unsqueeze(-1) + logp - logp.detach()
    ratio = torch.exp(token_log_ratio)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - clip_low, 1 + clip_high) * adv
    per_token = -torch.minimum(unclipped, clipped)
    loss = masked_mean(per_token, mask, dim=1).mean()
    with torch.no_grad():
        stats = {
            "clipfrac": masked_mean((clipped < unclipped).float(), mask),
            "approx_kl": (torch.exp(seq_log_ratio) - 1 - seq_log_ratio).mean(),
        }
    return loss, stats


POLICY_LOSSES = {"ppo": ppo_clipped_loss, "gspo": gspo_loss}
# What each loss averages over, so that gradient accumulation over micro-batches weights each
# micro-batch by its share of it and reproduces the full-batch gradient.
LOSS_AVERAGES_OVER = {"ppo": "tokens", "gspo": "rows"}


def clipped_value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    cliprange_value: float,
) -> torch.Tensor:
    """PPO's clipped value loss, 0.5 * max((v - R)^2, (v_clip - R)^2) averaged over ``mask``,
    with v_clip = old + clamp(v - old, -c, c). values, old_values, returns, mask: [B, S].

    Rows whose mask is 0 everywhere (unlabeled rows, for TEMPO's E-step) contribute nothing."""
    clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    loss = 0.5 * torch.maximum((values - returns) ** 2, (clipped - returns) ** 2)
    return masked_mean(loss, mask)


def em_token_advantages(
    state_values: torch.Tensor, terminal_rewards: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """TEMPO's ``em_token`` estimator: A_t = R - V(x, y_<t), whitened over the batch's tokens.

    state_values: [B, T] with state_values[b, t] = V(x, y_<t) (the value before token t);
    terminal_rewards: [B] (the critic's value of the full response for unlabeled rows, the true
    +1/-1 for labeled rows); mask: [B, T]. Returns [B, T], zero on padding."""
    raw = (terminal_rewards.unsqueeze(-1) - state_values) * mask
    return masked_whiten(raw, mask)


def em_group_advantages(
    rewards: torch.Tensor, eps: float = 1e-6
) -> torch.Tensor:
    """TEMPO's ``em`` estimator: terminal rewards clamped to [-1, 1] (critic values may overshoot),
    then normalised within each prompt group: [G, n] -> [G, n]."""
    return group_normalized_advantages(rewards.clamp(-1.0, 1.0), eps)
