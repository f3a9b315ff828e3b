"""The embedded column-addition task as a TaskData (see tempo_bench/toy/task.py)."""

from __future__ import annotations

from tempo_bench.grading import NUMERIC
from tempo_bench.tasks.base import AnswerKey, LabeledQuestion, Question, TaskData
from tempo_bench.toy.task import sample_questions


def load_toy_task(config) -> TaskData:
    """Test questions and the labeled pool, disjoint, deterministic from ``config.seed``."""
    test = sample_questions(
        config.test_size, config.seed, tuple(config.test_digits), config.test_chain_fraction
    )
    pool = sample_questions(
        config.labeled_size + config.test_size,
        config.seed + 1,
        tuple(config.labeled_digits),
        config.labeled_chain_fraction,
    )
    test_set = set(test)
    labeled = [q for q in pool if q not in test_set][: config.labeled_size]
    return TaskData(
        name="toy_addition",
        test=[Question(id=f"test-{i}", prompt=q.prompt) for i, q in enumerate(test)],
        answer_key=AnswerKey({f"test-{i}": q.answer for i, q in enumerate(test)}, NUMERIC),
        labeled=[
            LabeledQuestion(id=f"lab-{i}", prompt=q.prompt, answer=q.answer)
            for i, q in enumerate(labeled)
        ],
        grader=NUMERIC,  # integer answers: exact, and no sympy parse of malformed ones
    )
