"""EMPO (Zhang et al. 2025, semantic entropy minimisation): the reward of a response is the
frequency of its answer cluster among the question's N samples; an unparseable response gets 0."""

from __future__ import annotations

from collections import Counter

import torch

from tempo_bench.methods.base import Method, RewardOutput, RolloutBatch
from tempo_bench.methods.registry import register_method


@register_method("empo")
class EMPO(Method):
    def rewards(self, batch: RolloutBatch) -> RewardOutput:
        rewards = torch.zeros(len(batch.clusters), batch.n)
        for i, ids in enumerate(batch.clusters):
            counts = Counter(c for c in ids if c is not None)
            for j, c in enumerate(ids):
                rewards[i, j] = counts[c] / batch.n if c is not None else 0.0
        return RewardOutput(rewards)
