"""Standard TTT (TTRL, Zuo et al. 2025): reward 1 for a response whose answer is in the majority
answer cluster over n_vote samples, else 0.

Deliberate choices:
- Votes cluster answers by math-verify equivalence (tempo_bench.grading.answers.cluster_answers), so
  ``1/2`` and ``0.5`` vote together.
- n_vote >= n_train samples are drawn; all vote, the first n_train (a uniformly random subset,
  since samples are i.i.d.) are trained on, as TTRL does with 64 votes and 32 trained.
- Unparseable responses do not vote and get reward 0.
- Ties go to the cluster seen first in sampling order (grading.majority_cluster).
- No parseable answer in a group: no majority, every reward 0 (the group has no signal).
"""

from __future__ import annotations

import torch
from pydantic import BaseModel, ConfigDict, Field

from tempo_bench.core.metrics import majority_cluster
from tempo_bench.methods.base import Method, RewardOutput, RolloutBatch
from tempo_bench.methods.registry import register_method


@register_method("standard_ttt", default=True)
class StandardTTT(Method):
    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        n_vote: int | None = Field(
            None, ge=1, description="samples that vote per question (None: rollout.n)"
        )

    def __init__(self, options: Options, n_train: int, seed: int = 0):
        super().__init__(options, n_train, seed)
        if options.n_vote is not None and options.n_vote < n_train:
            raise ValueError(
                f"methods.standard_ttt.n_vote ({options.n_vote}) must be >= rollout.n ({n_train}): "
                "every trained sample also votes"
            )

    def samples_per_prompt(self) -> int:
        return self.options.n_vote or self.n_train

    def rewards(self, batch: RolloutBatch) -> RewardOutput:
        rewards = torch.zeros(len(batch.clusters), len(batch.clusters[0]))
        for i, ids in enumerate(batch.clusters):
            winner = majority_cluster(ids)
            for j, c in enumerate(ids):
                rewards[i, j] = float(winner is not None and c == winner)
        return RewardOutput(rewards=rewards)
