"""Tasks: questions, prompt templates, answer extraction and grading.

The leakage rule (DESIGN section 3) lives in these types: unlabeled test questions are plain
:class:`Question` objects without answers; their answers sit in an :class:`AnswerKey` that the loop
hands only to metrics code, never to a method.

``get_task(name)`` returns a real benchmark (aime24, aime25, amc, math500, gsm8k, gpqa, and the
labeled pools gsm8k_train, math_train, dapo17k); ``load_task_data(config)`` builds what a run
trains and evaluates on.
"""

from tempo_bench.tasks.base import AnswerKey, LabeledQuestion, Question, TaskData, load_task_data
from tempo_bench.tasks.real import TASK_SPECS, Task, get_task

__all__ = ["AnswerKey", "LabeledQuestion", "Question", "TASK_SPECS", "Task", "TaskData", "get_task", "load_task_data"]
