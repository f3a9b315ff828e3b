"""The policy scoring its own samples: teacher-forced forward passes over the full vocabulary
(what the confidence rewards need: a rollout backend's sampled log-probabilities are not enough,
so every backend serves these methods the same way)."""

from __future__ import annotations

import torch

from tempo_bench.core.confidence import response_confidence_chunked
from tempo_bench.policy.batch import (
    TrainBatch,
    micro_batches,
    response_states,
    select_rows,
)
from tempo_bench.policy.model import compute_device


@torch.no_grad()
def confidence_scores(model, batch: TrainBatch, temperature: float, micro_rows: int | None) -> dict[str, torch.Tensor]:
    """{"self_certainty": [B], "entropy": [B]}: the policy's mean token confidence over each
    response of ``batch``, from its distributions at ``temperature`` (dropout off)."""
    rows = batch.input_ids.shape[0]
    out = {"self_certainty": torch.zeros(rows), "entropy": torch.zeros(rows)}
    was_training = model.training
    model.eval()
    device = compute_device(model)
    try:
        for part in micro_batches(torch.arange(rows), micro_rows):
            mb = select_rows(batch, part)
            inputs, project, vocab = response_states(model, mb)
            scores = response_confidence_chunked(inputs, mb.mask.to(device), temperature, project, vocab)
            for name, values in scores.items():
                out[name][part] = values.cpu()
    finally:
        model.train(was_training)
    return out
