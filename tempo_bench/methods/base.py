"""The Method interface. A method may vary exactly four things (DESIGN section 3): how its batch
is made up (samples per question, unlabeled and labeled questions per step, which rows it trains
on), its reward, its advantage, and its critic schedule. Everything else is the loop's.

What a method sees is one :class:`RolloutBatch` that flows forward through a step: the rollout and
grade phases fill the questions (unlabeled ones without answers), samples, extracted answers,
answer clusters and the true correctness of rows of LABELED questions (D_L, which methods may
use); the critic phase adds the critic's values; the reward, advantage phases add what the method
returns. The true correctness of unlabeled rows is never in it (the leakage rule): the loop's
metrics code computes it from the AnswerKey, apart from the batch. Only a method with
``uses_test_labels = True`` (the oracle) is handed that key, and every run of it is tagged so.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import BaseModel, ConfigDict

from tempo_bench.core.algos import group_normalized_advantages
from tempo_bench.critic.ops import StepProbe
from tempo_bench.grading.answers import Grader
from tempo_bench.policy.batch import TrainBatch
from tempo_bench.rollout.base import Generation
from tempo_bench.tasks.base import LabeledQuestion, Question

if TYPE_CHECKING:
    from tempo_bench.critic.ops import CriticOps  # noqa: F401


@dataclass(frozen=True)
class StepShape:
    """One training step's batch, as the method makes it up: ``unlabeled`` test questions then
    ``labeled`` pool questions, ``samples`` responses to each, of which the first ``trained``
    are trained on (the rest only vote). Computed once by :meth:`Method.step_shape`; the run,
    the memory plan, the rank split and vLLM's KV cache all read it."""

    unlabeled: int
    labeled: int
    samples: int
    trained: int

    @property
    def questions(self) -> int:
        return self.unlabeled + self.labeled

    @property
    def sampled_rows(self) -> int:
        return self.questions * self.samples

    @property
    def trained_rows(self) -> int:
        """At most: a method may leave out whole groups (TEMPO's all-agreeing labeled ones)."""
        return self.questions * self.trained


@dataclass
class RolloutBatch:
    """G questions x N samples each, prompt-major (sample j of question i is row i * N + j).

    answers[i][j]: extracted answer (None: unparseable); clusters[i][j]: answer-equivalence
    cluster within the group; labeled_correct[i]: true correctness of the N samples if question
    i is labeled, else None. Filled in by later phases: state_values [G*N, T+1] and final_values
    [G, N], the critic's values of every state and of each complete response (critic methods);
    rewards [G, N] and reward_threshold (the method's reward); rows (the generation rows trained
    on), train (their sequences, [R, T]) and advantages ([R] or [R, T]) for the policy update."""

    questions: list[Question]
    generation: Generation
    answers: list[list[str | None]]
    clusters: list[list[int | None]]
    labeled_correct: list[list[bool] | None]
    step: int = 0
    # critic_score phase (critic methods)
    state_values: torch.Tensor | None = None
    final_values: torch.Tensor | None = None
    # confidence phase (methods whose reward is the policy's confidence): name -> [G, N]
    confidence: dict[str, torch.Tensor] | None = None
    # reward phase
    rewards: torch.Tensor | None = None
    reward_threshold: float = 0.5
    # advantage phase
    rows: list[int] | None = None
    train: TrainBatch | None = None
    advantages: torch.Tensor | None = None
    # critic and critic_probe phases: the held-out labeled probe of this step's policy
    probe: StepProbe = field(default_factory=StepProbe)

    @classmethod
    def from_answers(cls, questions: list[Question], generation: Generation, answers: list, clusters: list,
                     grader: Grader, step: int = 0) -> "RolloutBatch":
        """A batch of answers and clusters graded already (by the ranks that sampled them)."""
        labeled = [i for i, q in enumerate(questions) if isinstance(q, LabeledQuestion)]
        checked = dict(zip(labeled, grader.correctness([questions[i].answer for i in labeled],
                                                       [answers[i] for i in labeled]).tolist()))
        return cls(questions, generation, answers, clusters, [checked.get(i) for i in range(len(questions))], step)

    @property
    def n(self) -> int:
        return self.generation.n

    def is_labeled(self, i: int) -> bool:
        return isinstance(self.questions[i], LabeledQuestion)

    @property
    def unlabeled_groups(self) -> list[int]:
        return [i for i in range(len(self.questions)) if not self.is_labeled(i)]

    def true_rewards(self, i: int) -> torch.Tensor:
        """+1/-1 outcome rewards of labeled group i: [N]."""
        correct = self.labeled_correct[i]
        if correct is None:
            raise ValueError(f"group {i} is unlabeled: its true rewards are hidden")
        return torch.tensor([1.0 if c else -1.0 for c in correct])


@dataclass
class RewardOutput:
    """rewards: [G, N] float for every sample drawn (voting-only samples included); a sample
    counts as "judged correct" in reward/accuracy when its reward > ``threshold``."""

    rewards: torch.Tensor
    threshold: float = 0.5


class Method(ABC):
    """Subclasses set ``name``, may define ``Options`` (a pydantic model of their settings, filled
    from ``methods.<name>`` in the config) and implement ``rewards``."""

    name: ClassVar[str]
    uses_test_labels: ClassVar[bool] = False
    uses_critic: ClassVar[bool] = False

    class Options(BaseModel):
        model_config = ConfigDict(extra="forbid")

    def __init__(self, options: BaseModel, n_train: int, seed: int = 0):
        self.options = options
        self.n_train = n_train
        self.seed = seed  # the run's: a method's own draws come from step_seed(seed, step, stream)

    # -- what to sample ---------------------------------------------------------------------
    def step_shape(self, prompts_per_step: int) -> StepShape:
        """The step's batch with ``train.prompts_per_step`` configured: read this, not the hooks
        below (which methods override to make it up)."""
        return StepShape(self.unlabeled_per_step(prompts_per_step), self.labeled_per_step(),
                         self.samples_per_prompt(), self.n_train)

    def needs_labeled_pool(self, prompts_per_step: int) -> bool:
        """Whether runs of this method draw from the labeled pool D_L (a critic's E-steps and
        probe, or labeled rows in the batch)."""
        return self.uses_critic or self.step_shape(prompts_per_step).labeled > 0

    def samples_per_prompt(self) -> int:
        """How many responses to sample per question (>= n_train; extra ones only vote)."""
        return self.n_train

    def unlabeled_per_step(self, configured: int) -> int:
        """Unlabeled test questions per step (``train.prompts_per_step`` unless the method
        trains on labeled data only)."""
        return configured

    def labeled_per_step(self) -> int:
        """Labeled questions mixed into each step's M-step batch."""
        return 0

    def confidence_temperature(self, sampling_temperature: float) -> float | None:
        """The temperature at which the loop's confidence phase scores the policy's own samples
        (batch.confidence); None: this method's reward does not need them."""
        return None

    # -- reward and advantage ---------------------------------------------------------------
    @abstractmethod
    def rewards(self, batch: RolloutBatch) -> RewardOutput:
        """Rewards for all N samples of every question: [G, N]."""

    def train_rows(self, batch: RolloutBatch) -> list[int]:
        """Generation rows the policy trains on (``batch.rewards`` is set): the first n_train
        samples of each group."""
        return [i * batch.n + j for i in range(len(batch.questions)) for j in range(self.n_train)]

    def advantages(self, batch: RolloutBatch) -> torch.Tensor:
        """Advantages of ``batch.rows``: [R] (one per sequence) or [R, T] (per token, T =
        ``batch.train.mask.shape[1]``). Default: group-normalised over each group's first n_train
        rewards."""
        per_group = group_normalized_advantages(batch.rewards[:, : self.n_train])
        return torch.stack([per_group[r // batch.n, r % batch.n] for r in batch.rows])

    # -- checkpoints --------------------------------------------------------------------------
    def state_dict(self) -> dict:
        """What the method itself carries from step to step (JSON-serialisable)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    # -- critic schedule --------------------------------------------------------------------
    def update_critic(self, step: int, batch: RolloutBatch, ops: "CriticOps") -> dict[str, float]:
        """Called after each policy update; a method with a critic decides here whether and how
        it learns (``ops`` holds the shared procedures). Returns metrics to log."""
        return {}
