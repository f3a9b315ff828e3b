"""What the critic methods share: the critic's score as the reward of an unlabeled response, the
true +1/-1 outcome for a labeled one, and TEMPO's two advantage estimators.

fixed_critic, online_critic and tempo differ only in their critic schedule (and tempo in mixing
labeled rows into the M-step), so a comparison between them isolates recalibration.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field

from tempo_bench.core.algos import em_group_advantages, em_token_advantages
from tempo_bench.methods.base import Method, RewardOutput, RolloutBatch


class CriticOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    advantage: Literal["em_token", "em"] = Field(
        "em_token",
        description="em_token: A_t = R - V(x, y_<t), whitened; em: group-normalised R, V clamped to [-1, 1]",
    )


class CriticMethod(Method):
    uses_critic = True
    Options = CriticOptions

    def rewards(self, batch: RolloutBatch) -> RewardOutput:
        if batch.final_values is None:
            raise ValueError(f"{self.name} needs critic values in the batch")
        rewards = batch.final_values.clone().float()
        for i in range(len(batch.questions)):
            if batch.is_labeled(i):
                rewards[i] = batch.true_rewards(i)
        return RewardOutput(rewards=rewards, threshold=0.0)  # V > 0 <=> P(correct) > 1/2

    def advantages(self, batch):
        n, rows, mask = batch.n, batch.rows, batch.train.mask
        if self.options.advantage == "em":
            per_group = em_group_advantages(batch.rewards)
            return torch.stack([per_group[r // n, r % n] for r in rows])
        terminal = torch.stack([batch.rewards[r // n, r % n] for r in rows])
        values = batch.state_values[rows, : mask.shape[1]]
        return em_token_advantages(values, terminal, mask)
