"""Tasks: questions, prompt templates, answer extraction and grading.

The leakage rule (DESIGN section 3) lives in these types: unlabeled test questions are plain
:class:`Question` objects without answers; their answers sit in an :class:`AnswerKey` that the loop
hands only to metrics code, never to a method.
"""

from tempo_bench.tasks.base import AnswerKey, LabeledQuestion, Question, TaskData, get_task

__all__ = ["AnswerKey", "LabeledQuestion", "Question", "TaskData", "get_task"]
