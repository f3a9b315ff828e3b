"""Tasks: questions, prompt templates, answer extraction and grading.

The leakage rule (DESIGN section 3) lives in these types: unlabeled test questions are plain
:class:`Question` objects without answers; their answers sit in an :class:`AnswerKey` that the loop
hands only to metrics code, never to a method.

``get_task(name)`` returns a real benchmark (aime24, aime25, amc, math500, gsm8k, gpqa, and the
labeled pools gsm8k_train, math_train, dapo17k); ``load_task_data(config)`` builds what a run
trains and evaluates on.
"""

from tempo_bench.core.errors import DataError
from tempo_bench.tasks.base import AnswerKey, LabeledQuestion, Question, TaskData
from tempo_bench.tasks.real import TASK_SPECS, Task, get_task, load_real_task
from tempo_bench.tasks.toy import load_toy_task


def load_task_data(config) -> TaskData:
    """Build the task a config names (tempo_bench.config.ToyTaskConfig or RealTaskConfig)."""
    if config.name == "toy_addition":
        try:
            return load_toy_task(config)
        except DataError:
            raise
        except ValueError as err:  # knobs valid alone but not together (chain carries in 1-digit sums)
            raise DataError(f"task: {err}") from None
    return load_real_task(config)


def load_eval_task(config) -> TaskData:
    """A benchmark evaluated beside the test set (tempo_bench.config.EvalTaskConfig): its
    questions and answer key, no labeled pool; named by ``config.key()``."""
    task = get_task(config.name)
    rows = task.load(config.source, limit=config.limit)
    ids = [f"{config.key()}-{q.id}" for q in rows]
    return TaskData(name=config.key(), test=[Question(i, q.prompt) for i, q in zip(ids, rows)],
                    answer_key=AnswerKey({i: q.answer for i, q in zip(ids, rows)}, task), labeled=[], grader=task)


__all__ = ["AnswerKey", "LabeledQuestion", "Question", "TASK_SPECS", "Task", "TaskData", "get_task", "load_eval_task", "load_task_data"]
