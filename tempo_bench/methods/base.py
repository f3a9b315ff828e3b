"""The Method interface: methods differ only in their reward, advantage and critic schedule.

What a method sees of the unlabeled test questions is a :class:`RolloutBatch`: questions without
answers, the sampled responses, their extracted answers and answer clusters. True correctness is
not in it (the leakage rule); it is computed by the loop's metrics code from the AnswerKey.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from tempo_bench.algos import group_normalized_advantages
from tempo_bench.rollout.base import Generation
from tempo_bench.tasks.base import Question


@dataclass
class RolloutBatch:
    """G questions x N samples each (N = the method's samples_per_prompt). answers[i][j] is the
    extracted answer of sample j of question i (None: unparseable); clusters[i][j] its
    answer-equivalence cluster within the group."""

    questions: list[Question]
    generation: Generation
    answers: list[list[str | None]]
    clusters: list[list[int | None]]


@dataclass
class RewardOutput:
    """rewards: [G, N] float, for every sample drawn (voting-only samples included)."""

    rewards: torch.Tensor
    threshold: float = 0.5  # reward > threshold counts as "judged correct" in reward/accuracy


class Method(ABC):
    """Subclasses set ``name``, may define ``Options`` (a pydantic model of their settings, filled
    from ``methods.<name>`` in the config) and implement ``rewards``."""

    name: ClassVar[str]
    uses_test_labels: ClassVar[bool] = False

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, options: BaseModel, n_train: int):
        self.options = options
        self.n_train = n_train

    def samples_per_prompt(self) -> int:
        """How many responses to sample per question (>= n_train; extra ones only vote)."""
        return self.n_train

    @abstractmethod
    def rewards(self, batch: RolloutBatch) -> RewardOutput:
        """Rewards for all N samples of every question: [G, N]."""

    def advantages(self, rewards: torch.Tensor) -> torch.Tensor:
        """Advantages of the n_train training samples: [G, N] rewards -> [G, n_train]."""
        return group_normalized_advantages(rewards[:, : self.n_train])
