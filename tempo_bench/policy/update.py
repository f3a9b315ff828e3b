"""The policy's M-step: the clipped policy-gradient update on a rollout batch."""

from __future__ import annotations

import torch

from tempo_bench.core.algos import (
    LOSS_AVERAGES_OVER,
    POLICY_LOSSES,
    masked_mean,
)
from tempo_bench.policy.batch import (
    TrainBatch,
    accumulated_step,
    micro_batches,
    response_logprobs,
    select_rows,
)
from tempo_bench.policy.model import compute_device


@torch.no_grad()
def sampled_logprobs(model, batch: TrainBatch, temperature: float, micro_rows: int | None,
                     micro_tokens: int | None = None) -> torch.Tensor:
    """log pi(response token) of every row under ``model``: [B, T] (0 past each response)."""
    out = torch.zeros(batch.response_ids.shape)
    for rows in micro_batches(torch.arange(batch.input_ids.shape[0]), micro_rows, batch.attention.sum(1), 1,
                              micro_tokens):
        mb = select_rows(batch, rows)
        logp, _ = response_logprobs(model, mb, temperature, entropy=False)
        out[rows, : logp.shape[1]] = logp.cpu()
    return out


def policy_update(
    model,
    optimizer,
    batch: TrainBatch,
    advantages: torch.Tensor,
    train_cfg,
    temperature: float,
    ranks=None,
) -> dict[str, float]:
    """One M-step on a rollout batch: ``ppo_epochs`` passes of ``minibatches`` optimiser steps of
    the clipped objective (train_cfg.loss). Each optimiser step accumulates gradients over
    micro-batches of ``train_cfg.micro_batch_rows`` rows, weighted so that the gradient equals
    the whole minibatch's. advantages: [B] or [B, T]. Returns mean statistics.

    On several ranks (``ranks``, tempo_bench.run.distributed) each back-propagates its part of
    every minibatch, weighted by the whole minibatch's units, and the gradients and statistics
    are summed over ranks before clipping and the step."""
    loss_fn = POLICY_LOSSES[train_cfg.loss]
    by_tokens = LOSS_AVERAGES_OVER[train_cfg.loss] == "tokens"
    device = compute_device(model)
    rows = batch.input_ids.shape[0]
    one_update = train_cfg.ppo_epochs == 1 and train_cfg.minibatches == 1
    lengths = batch.attention.sum(1)
    old_logp = None
    if not one_update:  # several updates on one batch: the ratio needs the pre-update policy
        old_logp = sampled_logprobs(model, batch, temperature, train_cfg.micro_batch_rows, train_cfg.micro_batch_tokens)

    def loss_of(micro: torch.Tensor):
        mb = select_rows(batch, micro)
        logp, entropy = response_logprobs(model, mb, temperature)
        width = logp.shape[1]  # select_rows trims to the micro-batch's longest response
        mb_old = logp.detach() if old_logp is None else old_logp[micro, :width].to(device)
        mb_adv = advantages[micro] if advantages.dim() == 1 else advantages[micro, :width]
        mask = mb.mask.to(device)
        loss, loss_stats = loss_fn(logp, mb_old, mb_adv.to(device), mask, train_cfg.clip_low, train_cfg.clip_high)
        units = float(mb.mask.sum()) if by_tokens else float(len(micro))
        return loss, units, {"entropy": masked_mean(entropy, mask), **loss_stats}

    stats: dict[str, list[float]] = {}
    model.train()
    for _ in range(train_cfg.ppo_epochs):
        for minibatch in torch.arange(rows).chunk(train_cfg.minibatches):
            total = float(batch.mask[minibatch].sum()) if by_tokens else float(len(minibatch))
            mine = minibatch if ranks is None else ranks.split(minibatch)
            parts = micro_batches(mine, train_cfg.micro_batch_rows, lengths, train_cfg.length_buckets,
                                  train_cfg.micro_batch_tokens)
            step_stats, grad_norm = accumulated_step(optimizer, parts, loss_of, max(total, 1.0),
                                                     train_cfg.grad_clip, "policy loss", ranks)
            for key, value in {**step_stats, "grad_norm": grad_norm}.items():
                stats.setdefault(key, []).append(value)
    return {key: sum(v) / len(v) for key, v in stats.items()}


