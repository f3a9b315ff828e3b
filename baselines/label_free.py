"""Label-free rewards that test-time and unsupervised RL papers compare against, and the random
control. Rewards are per sample; the advantage is the default group-normalised one (as TTRL's).

- ``self_certainty`` (Intuitor, Zhao et al. 2025, arXiv 2505.19590; sunblaze-ucb/Intuitor): the
  mean over response tokens of KL(uniform || p_theta(. | context)), from the policy's own
  full-vocabulary logits (tempo_bench.core.confidence). Deviation: Intuitor's code omits the
  constant -log V, which group normalisation removes anyway.
- ``entropy_min`` (RENT, Prabhudesai et al. 2025, arXiv 2505.22660; satrams/rent-rl): the negative
  mean token entropy of the response. Deviation: the mean runs over every response token; RENT
  reports that the last tokens' entropy correlates best with accuracy and offers that variant.
- ``random_reward``: Bernoulli(p) rewards per sample, seeded by (run seed, step): how much of a gain
  any reward would give (the control of the unsupervised-RLVR study, PRIME-RL/TTRL urlvr-dev).

The confidence scores are computed by the loop's ``confidence`` phase, a teacher-forced pass of the
policy over the step's samples at the method's ``temperature`` (default: the sampling temperature).
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field

from tempo_bench.core.seeds import Stream, step_seed
from tempo_bench.methods.base import Method, RewardOutput, RolloutBatch
from tempo_bench.methods.registry import register_method


class ConfidenceOptions(BaseModel):
    model_config = ConfigDict(extra="forbid")
    temperature: float | None = Field(
        None, gt=0, description="temperature of the scored next-token distributions (None: the sampling temperature)")


class ConfidenceMethod(Method):
    """A reward read off the policy's own distributions over its samples."""

    Options = ConfidenceOptions
    score: str  # the key of batch.confidence the reward is made of
    sign: float = 1.0

    def confidence_temperature(self, sampling_temperature: float) -> float | None:
        return self.options.temperature or sampling_temperature

    def rewards(self, batch: RolloutBatch) -> RewardOutput:
        if batch.confidence is None:
            raise ValueError(f"{self.name} needs the policy's confidence scores in the batch (the confidence phase)")
        # no threshold turns a confidence into a verdict: reward/accuracy is undefined (NaN)
        return RewardOutput(self.sign * batch.confidence[self.score], threshold=math.nan)


@register_method("self_certainty")
class SelfCertainty(ConfidenceMethod):
    score = "self_certainty"


@register_method("entropy_min")
class EntropyMin(ConfidenceMethod):
    score, sign = "entropy", -1.0


@register_method("random_reward")
class RandomReward(Method):
    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")
        p: float = Field(0.5, gt=0, lt=1, description="probability of reward 1 for each sample")

    def rewards(self, batch: RolloutBatch) -> RewardOutput:
        generator = torch.Generator().manual_seed(step_seed(self.seed, batch.step, Stream.RANDOM_REWARD))
        return RewardOutput(torch.bernoulli(torch.full((len(batch.questions), batch.n), self.options.p),
                                            generator=generator))
