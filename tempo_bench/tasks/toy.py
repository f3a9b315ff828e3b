"""The embedded column-addition task as a TaskData (see tempo_bench/tasks/addition.py)."""

from __future__ import annotations

from tempo_bench.grading.answers import NUMERIC
from tempo_bench.tasks.addition import Addition, sample_questions
from tempo_bench.tasks.base import AnswerKey, LabeledQuestion, Question, TaskData


def toy_test_questions(config) -> list[Addition]:
    """The toy question objects of the test set (their prompts are the TaskData's)."""
    return sample_questions(config.test_size, config.seed, tuple(config.test_digits), config.test_chain_fraction)


def toy_pool(config) -> list[LabeledQuestion]:
    """The large labeled pool (``pool_size`` questions, none of them a test question): the RLVR
    stage trains on it, and D_L is its first ``labeled_size`` questions."""
    test_set = set(toy_test_questions(config))
    pool = sample_questions(
        config.pool_size + config.test_size, config.seed + 1, tuple(config.labeled_digits),
        config.labeled_chain_fraction,
    )
    pool = [q for q in pool if q not in test_set][: config.pool_size]
    return [LabeledQuestion(id=f"lab-{i}", prompt=q.prompt, answer=q.answer) for i, q in enumerate(pool)]


def load_toy_task(config) -> TaskData:
    """Test questions and D_L, disjoint, deterministic from ``config.seed``."""
    test = toy_test_questions(config)
    return TaskData(
        name="toy_addition",
        test=[Question(id=f"test-{i}", prompt=q.prompt) for i, q in enumerate(test)],
        answer_key=AnswerKey({f"test-{i}": q.answer for i, q in enumerate(test)}, NUMERIC),
        labeled=toy_pool(config)[: config.labeled_size],
        grader=NUMERIC,  # integer answers: exact, and no sympy parse of malformed ones
    )
