"""Real benchmarks: loading (hub through `datasets`, or local JSON / JSONL / parquet files in the
TTRL, verl and upstream shapes), prompt templates and grading.

    task = get_task("math500")
    questions = task.load("../shared/data/ttrl/MATH-TTT.json")
    task.is_correct("... so the answer is \\boxed{\\frac{14}{3}}", "\\frac{14}{3}")  # True
"""

from __future__ import annotations

import json
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tempo_bench.core.errors import DataError
from tempo_bench.core.registry import unknown_name
from tempo_bench.grading.answers import (
    Grader,
    answers_equivalent,
    canonical_number,
    extract_answer,
    final_part,
)
from tempo_bench.tasks.base import AnswerKey, LabeledQuestion, Question, TaskData

if TYPE_CHECKING:
    from tempo_bench.tasks.base import TaskData

MATH_TEMPLATE = "{question}\nPlease reason step by step, and put your final answer within \\boxed{{}}."
CHOICE_TEMPLATE = ("{question}\nPlease reason step by step, and put the letter of the correct option "
                   "within \\boxed{{}}.")


@dataclass(frozen=True)
class TaskSpec:
    name: str
    hub_id: str
    hub_config: str | None
    split: str
    kind: Literal["math", "gsm8k", "choice", "integer"]
    description: str
    # how a question is asked ({question}); None: the kind's template (a \boxed{} instruction)
    template: str | None = None
    # a task file's: its data file, and the fields of a row that hold the question and the answer
    source: str | None = None
    question_field: str | None = None
    answer_field: str | None = None


TASK_SPECS = {s.name: s for s in [
    TaskSpec("aime24", "HuggingFaceH4/aime_2024", None, "train", "math", "AIME 2024, 30 problems"),
    TaskSpec("aime25", "math-ai/aime25", None, "test", "math", "AIME 2025, 30 problems"),
    TaskSpec("amc", "AI-MO/aimo-validation-amc", None, "train", "math", "AMC 2023, 83 problems"),
    TaskSpec("math500", "HuggingFaceH4/MATH-500", None, "test", "math", "MATH-500"),
    TaskSpec("gsm8k", "openai/gsm8k", "main", "test", "gsm8k", "GSM8K test, 1319 problems"),
    TaskSpec("gpqa", "Idavidrein/gpqa", "gpqa_diamond", "train", "choice", "GPQA diamond, multiple choice"),
    TaskSpec("gsm8k_train", "openai/gsm8k", "main", "train", "gsm8k", "labeled pool: GSM8K train"),
    TaskSpec("math_train", "DigitalLearningGmbH/MATH-lighteval", None, "train", "math", "labeled pool: MATH train"),
    # DAPO's prompts carry their own instruction (a last line "Answer: X"): asked as published
    TaskSpec("dapo17k", "BytedTsinghua-SIA/DAPO-Math-17k", None, "train", "math", "labeled pool: DAPO-Math-17k",
             template="{question}"),
]}

_QUESTION_KEYS = ("prompt", "problem", "question", "Question")
_CHOICE = re.compile(r"(?:answer is|answer:)\s*\(?([A-J])\)?(?![A-Za-z])", re.IGNORECASE)


class Task(Grader):
    """A real benchmark: where its questions come from, how they are asked, how they are graded."""

    def __init__(self, spec: TaskSpec):
        self.spec = spec
        self.name = spec.name

    def __repr__(self) -> str:
        return f"Task({self.name!r}, {self.spec.kind})"

    # -- grading ------------------------------------------------------------------------------
    def extract_answer(self, text: str) -> str | None:
        if self.spec.kind != "choice":
            return extract_answer(text)
        final = final_part(text)
        if final is None:  # thinking that never closed
            return None
        boxed = extract_answer(final)
        if boxed is not None:
            letter = re.sub(r"\\text\{([^}]*)\}", r"\1", boxed).strip().strip("()").strip()
            if re.fullmatch(r"[A-Ja-j]", letter):
                return letter.upper()
        found = _CHOICE.findall(final)
        return found[-1].upper() if found else None

    def equivalent(self, gold: str, extracted: str | None) -> bool:
        """Whether an extracted answer equals ``gold`` (letters for multiple choice, math-verify
        otherwise). ``is_correct(response, gold)`` extracts first."""
        if extracted is None:
            return False
        if self.spec.kind == "choice":
            return extracted.strip().upper() == gold.strip().upper()
        if self.spec.kind == "integer":
            return _integer(extracted) is not None and _integer(extracted) == _integer(gold)
        return answers_equivalent(normalise_gold(gold), extracted)

    def prompt(self, question: str) -> str:
        template = self.spec.template or (CHOICE_TEMPLATE if self.spec.kind == "choice" else MATH_TEMPLATE)
        return template.format(question=question)

    # -- loading ------------------------------------------------------------------------------
    def load(self, source: str | Path | None = None, limit: int | None = None) -> list[LabeledQuestion]:
        """Questions with gold answers from a local file (JSON list, JSONL, parquet) or, without
        ``source``, from the hub through ``datasets``. Raises ValueError naming the file and row
        when a row has no question or no parseable gold answer."""
        source = source if source is not None else self.spec.source
        rows = read_rows(source) if source is not None else Rows(self._hub_rows(), self.spec.hub_id)
        if not rows:
            raise DataError(f"{rows.source}: no rows")
        out, first_seen, repeats, conflicts = [], {}, 0, 0
        for i, row in enumerate(rows[:limit] if limit else rows):
            if GPQA_OPTIONS[0] in row:  # GPQA's hub columns: the question and its options apart
                row = {**row, **gpqa_choice_row(row)}
            if self.spec.question_field:  # a task file names its fields
                row = {"question": row.get(self.spec.question_field), "answer": row.get(self.spec.answer_field)}
            question, answer = row_question(row), self.row_answer(row)
            if not question:
                raise DataError(f"{rows.where(i)}: no question field (looked for {', '.join(_QUESTION_KEYS)})")
            if not answer:
                raise DataError(f"{rows.where(i)}: no parseable gold answer (looked for answer, solution, "
                                "reward_model.ground_truth)")
            if question in first_seen:  # DAPO-Math-17k's hub file repeats each prompt ~100 times
                repeats += 1
                conflicts += not self.equivalent(first_seen[question], answer)
                continue
            first_seen[question] = answer
            out.append(LabeledQuestion(id=str(row.get("id", i)), prompt=self.prompt(question), answer=answer))
        if self.spec.question_field:
            self._check_golds(out, rows.source)
        if repeats:
            warnings.warn(f"{rows.source}: {repeats:,} repeated questions dropped, {len(out):,} distinct kept"
                          + (f"; {conflicts:,} of the repeats had another gold answer (the first row's kept)"
                             if conflicts else ""), stacklevel=2)
        return out

    def _check_golds(self, questions: list[LabeledQuestion], source: str) -> None:
        """A task file's gold answers must be readable by its grader: none readable is a wrong
        field or grader kind, stopped before any work with three examples."""
        readable = {"integer": lambda a: _integer(a) is not None,
                    "choice": lambda a: re.fullmatch(r"[A-Ja-j]", a.strip()) is not None}.get(
            self.spec.kind, lambda a: canonical_number(a) is not None or answers_equivalent(a, a + " "))
        if questions and not any(readable(q.answer) for q in questions[:200]):
            examples = ", ".join(repr(q.answer) for q in questions[:3])
            raise DataError(f"{source}: no gold answer of field {self.spec.answer_field!r} is one the "
                            f"{self.spec.kind!r} grader can read (e.g. {examples}): check answer_field and grader")

    def row_answer(self, row: dict) -> str | None:
        ground = row.get("reward_model")
        if isinstance(ground, dict) and ground.get("ground_truth") is not None:  # verl parquet
            return str(ground["ground_truth"]).strip()
        answer = row.get("answer")
        if answer is None and row.get("solution"):
            return extract_answer(str(row["solution"]))
        if answer is None:
            return None
        answer = str(answer).strip()
        if self.spec.kind == "gsm8k" and "####" in answer:
            answer = answer.split("####")[-1].strip()
        return answer or None

    def _hub_rows(self) -> list[dict]:
        from datasets import load_dataset

        try:
            ds = load_dataset(self.spec.hub_id, self.spec.hub_config, split=self.spec.split)
        except Exception as err:  # offline, gated or renamed: say which and how to work around it
            raise DataError(
                f"could not load {self.spec.hub_id} from the hub ({type(err).__name__}: {err}); "
                f"download it and pass a local file instead"
            ) from None
        return [dict(r) for r in ds]


GPQA_OPTIONS = ("Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2", "Incorrect Answer 3")
GPQA_SHUFFLE_SEED = 0  # the options' order: the same letters on every run and machine


def gpqa_choice_row(row: dict) -> dict:
    """A row of GPQA's hub columns as a multiple-choice question (the TTRL file's layout:
    options as "A. ...") and its letter. The options are shuffled by GPQA_SHUFFLE_SEED and the
    row's Record ID, so the correct one is not always A and every run sees the same letters."""
    import random

    options = [str(row[key]).strip() for key in GPQA_OPTIONS]
    order = list(range(len(options)))
    random.Random(f"{GPQA_SHUFFLE_SEED}:{row.get('Record ID') or row.get('Question')}").shuffle(order)
    letters = "ABCD"
    listed = "\n".join(f"{letters[slot]}. {options[option]}" for slot, option in enumerate(order))
    return {"Question": f"{str(row.get('Question', '')).strip()}\n\n{listed}", "answer": letters[order.index(0)]}


def normalise_gold(answer: str) -> str:
    """Gold answers as published: AMC's "142.0", AIME's zero-padded "025" compare as numbers."""
    number = canonical_number(answer)
    return number if number is not None else answer


def row_question(row: dict) -> str | None:
    for key in _QUESTION_KEYS:
        value = row.get(key)
        if hasattr(value, "tolist") and not isinstance(value, str):  # parquet gives numpy arrays
            value = value.tolist()
        if isinstance(value, list):  # verl: a chat, [{"role": "user", "content": ...}]
            users = [m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "user"]
            value = users[-1] if users else None
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


class Rows(list):
    """The rows of a task source, each of which can say where it came from: ``file:line`` for
    JSONL, ``file item N`` (from 1) for a JSON list or a parquet file, ``hub-id row N`` (from 0,
    as ``datasets`` indexes) for the hub."""

    def __init__(self, rows, source, lines: list[int] | None = None, item_from: int = 0):
        super().__init__(rows)
        self.source, self.lines, self.item_from = str(source), lines, item_from

    def where(self, i: int) -> str:
        if self.lines is not None:
            return f"{self.source}:{self.lines[i]}"
        return f"{self.source} {'item' if self.item_from else 'row'} {i + self.item_from}"


def read_rows(path: str | Path) -> Rows:
    """The rows of a local task file (JSON list, JSONL, parquet). Raises DataError naming the
    file and, for JSONL and malformed JSON, the line of the first problem."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"task file {path} does not exist")
    try:
        if path.suffix == ".parquet":
            import pandas as pd

            return _check_rows(Rows(pd.read_parquet(path).to_dict("records"), path, item_from=1))
        text = path.read_text()
    except (OSError, UnicodeDecodeError, ValueError) as err:  # pyarrow raises ValueError subclasses
        raise DataError(f"task file {path} cannot be read: {err}") from None
    if path.suffix == ".jsonl" or not text.lstrip().startswith("["):
        rows, lines = [], []
        for number, line in enumerate(text.split("\n"), 1):  # not splitlines: U+2028 may sit inside a string
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{number}: not valid JSON ({err.msg} at column {err.colno})") from None
                lines.append(number)
        return _check_rows(Rows(rows, path, lines=lines))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise DataError(f"{path}:{err.lineno}: not valid JSON ({err.msg} at column {err.colno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON list of rows (or one JSON object per line)")
    return _check_rows(Rows(data, path, item_from=1))


def _check_rows(rows: Rows) -> Rows:
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise DataError(f"{rows.where(i)}: expected an object with a question and an answer, "
                            f"got {type(row).__name__}")
    return rows


def _integer(answer: str) -> int | None:
    number = canonical_number(answer)
    return int(number) if number is not None and "." not in number else None


def is_task_file(name: str) -> bool:
    return name.endswith((".yaml", ".yml"))


def task_spec(name: str) -> TaskSpec:
    """The spec of a task name, or of a task file (a path ending in .yaml)."""
    if is_task_file(name):
        return load_task_file(name)
    if name not in TASK_SPECS:
        raise ValueError(unknown_name("task", name, sorted(TASK_SPECS)) + ", or a task file (.yaml)")
    return TASK_SPECS[name]


def get_task(name: str) -> Task:
    return Task(task_spec(name))


GRADERS = ("math", "integer", "choice")  # a task file's grader: math-verify, equal integers, option letters
# a task file's fields: what each required one holds ("" for an optional one)
TASK_FILE_FIELDS = {
    "data": "the data file: JSON list, JSONL or parquet, relative to the task file",
    "question_field": "the field of a row that holds the question",
    "answer_field": "the field of a row that holds the gold answer",
    "grader": f"how answers are compared: {', '.join(GRADERS)}",
    "template": "", "name": "", "description": "",
}


def load_task_file(path: str | Path) -> TaskSpec:
    """A task of your own, without code: a YAML file naming its data file (JSON list, JSONL or
    parquet; relative to the YAML file), the fields holding the question and the answer, the prompt
    template (with ``{question}``; default: the question alone) and the grader (math: math-verify
    equivalence; integer: equal integers; choice: option letters). Raises DataError naming the file
    and the field."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(f"task file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise DataError(f"task file {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise DataError(f"task file {path}: expected a mapping of fields ({', '.join(TASK_FILE_FIELDS)})")
    unknown = sorted(set(raw) - set(TASK_FILE_FIELDS))
    if unknown:
        raise DataError(f"task file {path}: unknown field {unknown[0]!r}; the fields are {', '.join(TASK_FILE_FIELDS)}")
    missing = [field for field, what in TASK_FILE_FIELDS.items() if what and not raw.get(field)]
    if missing:
        raise DataError(f"task file {path}: missing field {missing[0]!r} ({TASK_FILE_FIELDS[missing[0]]})")
    template = str(raw.get("template") or "{question}")
    if "{question}" not in template:
        raise DataError(f"task file {path}: field 'template' must contain {{question}}, got {template!r}")
    if raw["grader"] not in GRADERS:
        raise DataError(f"task file {path}: field 'grader' is {raw['grader']!r}; choose one of {', '.join(GRADERS)}")
    data = Path(str(raw["data"]))
    # literal braces in the template (\boxed{}) stay literal: only {question} is filled in
    escaped = template.replace("{", "{{").replace("}", "}}").replace("{{question}}", "{question}")
    return TaskSpec(name=str(raw.get("name") or path.stem), hub_id=str(path), hub_config=None, split="file",
                    kind=raw["grader"], description=str(raw.get("description") or f"task file {path}"),
                    template=escaped, source=str(data if data.is_absolute() else path.parent / data),
                    question_field=str(raw["question_field"]), answer_field=str(raw["answer_field"]))


def load_real_task(config) -> "TaskData":
    """D_U and D_L of a run on a real benchmark (config: tempo_bench.config.RealTaskConfig).

    Test questions keep their file order (``limit`` takes the first N); the labeled questions
    are a seeded sample of the pool, with any question whose text is also a test question
    dropped, so no test answer can reach a method through the labeled pool."""
    import random

    task = get_task(config.name)
    test = task.load(config.source, limit=config.limit)
    labeled: list[LabeledQuestion] = []
    if config.labeled_size:
        pool = get_task(config.labeled).load(config.labeled_source)
        test_prompts = {q.prompt.strip() for q in test}
        pool = [q for q in pool if q.prompt.strip() not in test_prompts]
        if len(pool) < config.labeled_size:
            raise DataError(f"labeled pool {config.labeled!r} has {len(pool)} questions (after "
                             f"removing test questions), fewer than task.labeled_size={config.labeled_size}")
        order = list(range(len(pool)))
        random.Random(config.seed).shuffle(order)
        labeled = [LabeledQuestion(id=f"lab-{pool[i].id}", prompt=pool[i].prompt, answer=pool[i].answer)
                   for i in order[: config.labeled_size]]
    ids = [f"test-{q.id}" for q in test]
    return TaskData(
        name=config.name,
        test=[Question(id=i, prompt=q.prompt) for i, q in zip(ids, test)],
        answer_key=AnswerKey({i: q.answer for i, q in zip(ids, test)}, task),
        labeled=labeled,
        grader=task,
    )
