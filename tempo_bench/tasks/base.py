"""Question types, the hidden answer key, and the task registry."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

from tempo_bench.core.errors import DataError
from tempo_bench.grading.answers import GENERIC, Grader


@dataclass(frozen=True)
class Question:
    """A question as a method sees it: no answer."""

    id: str
    prompt: str


@dataclass(frozen=True)
class LabeledQuestion(Question):
    """A question from the labeled pool D_L; methods that use labels may read ``answer``."""

    answer: str


class AnswerKey:
    """The hidden answers of unlabeled test questions. Only metrics code receives one; its repr
    shows no answers so that it cannot leak into logs by accident."""

    def __init__(self, answers: dict[str, str], grader: Grader = GENERIC):
        self._answers = dict(answers)
        self.grader = grader

    def __len__(self) -> int:
        return len(self._answers)

    def __contains__(self, question_id: str) -> bool:
        return question_id in self._answers

    def __repr__(self) -> str:
        return f"AnswerKey({len(self)} hidden answers)"

    def answer(self, question_id: str) -> str:
        return self._answers[question_id]

    def is_correct(self, question_id: str, response: str) -> bool:
        return self.grader.is_correct(response, self._answers[question_id])

    def is_correct_answer(self, question_id: str, extracted: str | None) -> bool:
        return self.grader.equivalent(self._answers[question_id], extracted)

    def shuffled(self, seed: int) -> "AnswerKey":
        """The same questions with their answers permuted (for the leakage test)."""
        ids, values = list(self._answers), list(self._answers.values())
        random.Random(seed).shuffle(values)
        return AnswerKey(dict(zip(ids, values)), self.grader)


@dataclass
class TaskData:
    """What a run trains and evaluates on, and the grader of its answers (test and labeled
    questions share one: config validation requires the labeled pool to be graded alike)."""

    name: str
    test: list[Question]
    answer_key: AnswerKey
    labeled: list[LabeledQuestion]
    grader: Grader = GENERIC

    def __post_init__(self):
        if not self.test:
            raise DataError(f"task {self.name!r} has no test questions")
        missing = [q.id for q in self.test if q.id not in self.answer_key]
        if missing:
            raise DataError(f"task {self.name!r}: no gold answer for test questions {missing[:5]}")
        ids = [q.id for q in self.test]
        if len(set(ids)) != len(ids):
            raise DataError(f"task {self.name!r}: duplicate question ids in the test set")

    def with_prompts(self, render) -> "TaskData":
        """The same task with every prompt passed through ``render`` (a chat template)."""
        return replace(self, test=[replace(q, prompt=render(q.prompt)) for q in self.test],
                       labeled=[replace(q, prompt=render(q.prompt)) for q in self.labeled])

