"""labeled_rlvr: policy RL on the labeled pool D_L alone with true +1/-1 rewards and
group-normalised advantages. The control for TEMPO, whose M-step also trains on labeled rows:
it shows how much of TEMPO's gain the labeled data alone would give."""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from tempo_bench.methods.base import Method, RewardOutput, RolloutBatch
from tempo_bench.methods.registry import register_method


@register_method("labeled_rlvr")
class LabeledRLVR(Method):
    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        labeled_prompts_per_step: int = Field(16, ge=1, description="labeled questions per step")

    def unlabeled_per_step(self, configured: int) -> int:
        return 0

    def labeled_per_step(self) -> int:
        return self.options.labeled_prompts_per_step

    def rewards(self, batch: RolloutBatch) -> RewardOutput:
        return RewardOutput(torch.stack([batch.true_rewards(i) for i in range(len(batch.questions))]), 0.0)
