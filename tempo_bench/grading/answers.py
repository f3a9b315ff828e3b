"""Answer extraction, equivalence and clustering, shared by every task, method and metric.

Equivalence is math-verify's ``parse`` + ``verify`` (LaTeX, fractions, tuples, units...). Plain
numbers, by far the most common answers, are compared on a canonical decimal form first, which is
exact and saves a sympy round trip per pair.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
from contextlib import contextmanager
from decimal import Decimal, InvalidOperation, localcontext
from functools import lru_cache

import numpy as np

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
_HASH_ANSWER = re.compile(r"####\s*([^\n]+)")
# DAPO's form: "the last line of your response should be of the form Answer: $Answer"
# (markdown emphasis around it allowed: **Answer:** 17)
_ANSWER_LINE = re.compile(r"^[\s*_#>]*answer[\s*_]*:[\s*_]*(.+?)[\s*_]*$", re.IGNORECASE)
# "the answer is $X$." where X may hold escaped dollars (\$18.90)
_ANSWER_IS = re.compile(r"answer is[:\s]*\$?((?:\\\$|[^\n$])+?)\$?\s*(?:\.\s*)?$", re.IGNORECASE | re.MULTILINE)
_NUMBER = re.compile(r"^[+-]?(\d+(\.\d*)?|\.\d+)$")
# One time budget per verdict (parsing both answers and comparing them), enforced with SIGALRM,
# which only the main thread may set; elsewhere there is none, which is why grading.workers runs
# verdicts in worker processes (each its own main thread) with a per-item timeout on top
# (tempo_bench/grading/pool.py). math-verify's own per-call timeouts are off: they use the same signal.
VERDICT_TIMEOUT_S = 5.0
# No real answer is this long or this deeply nested; sympy can take minutes on such input.
MAX_ANSWER_CHARS, MAX_BRACE_DEPTH = 400, 12  # brackets of any kind
logging.getLogger("math_verify").setLevel(logging.ERROR)


class _VerdictTimeout(Exception):
    pass


@contextmanager
def _deadline(seconds: float):
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _VerdictTimeout

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


_NESTING = {"{": 1, "(": 1, "[": 1, "}": -1, ")": -1, "]": -1}


def _too_complex(answer: str) -> bool:
    depth = deepest = 0
    for ch in answer:
        depth += _NESTING.get(ch, 0)
        deepest = max(deepest, depth)
    return len(answer) > MAX_ANSWER_CHARS or deepest > MAX_BRACE_DEPTH


def _last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` with balanced braces, or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i, depth = start + len("\\boxed{"), 1
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i:j]
    return None  # unbalanced: no answer rather than a truncated one


def final_part(text: str) -> str | None:
    """The part of a response that answers: what follows the last ``</think>`` of a reasoning
    model; the whole text where no thinking block opened; None where one opened and never closed
    (a response cut off while thinking has not answered, whatever guesses its thinking holds)."""
    if THINK_CLOSE in text:
        return text.rsplit(THINK_CLOSE, 1)[1]
    return None if THINK_OPEN in text else text


def _answer_line(text: str) -> str | None:
    """X of a last line ``Answer: X`` (DAPO's form; ``$X$`` unwrapped), or None."""
    lines = [line for line in text.splitlines() if line.strip()]
    match = _ANSWER_LINE.match(lines[-1]) if lines else None
    if match is None:
        return None
    answer = match.group(1).strip().rstrip(".").strip()
    if answer.startswith("$") and answer.endswith("$"):  # "$42$"; a lone "$" is no answer
        answer = answer[1:-1].strip()
    return answer or None


def extract_answer(text: str) -> str | None:
    """The final answer of a response, read from its :func:`final_part`: the last
    ``\\boxed{}``, else a last line ``Answer: X`` (DAPO), else the last ``#### N`` (GSM8K), else
    the last "the answer is X". None when there is none (an unparseable response, or thinking
    that never closed)."""
    text = final_part(text)
    if text is None:
        return None
    boxed = _last_boxed(text)
    if boxed is not None and boxed.strip():
        return boxed.strip()
    line = _answer_line(text)
    if line is not None:
        return line
    for pattern in (_HASH_ANSWER, _ANSWER_IS):
        found = pattern.findall(text)
        if found:
            answer = found[-1].strip().rstrip(".")
            return answer or None
    return None


def canonical_number(answer: str) -> str | None:
    """A canonical string for a plain number (``"025"``, ``"25.0"``, ``"1,000"`` -> ``"25"``,
    ``"25"``, ``"1000"``), None if ``answer`` is not one."""
    s = answer.strip().replace(",", "").replace(" ", "")
    if not _NUMBER.match(s):
        return None
    # exact for any length: the default context would round past 28 digits (and make two
    # different 30-digit answers equal)
    with localcontext(prec=len(s) + 2):
        try:
            normal = Decimal(s).normalize()
        except InvalidOperation:
            return None
        if normal.is_zero():
            return "0"
        return format(normal, "f")


@lru_cache(maxsize=65536)
def _parsed(answer: str):
    """math-verify's LaTeX parser only: its plain-expression parser runs sympy's ``parse_expr``,
    which evaluates the (model-written) text as Python code."""
    from math_verify import LatexExtractionConfig, parse

    text = answer if "$" in answer or "\\(" in answer else f"${answer}$"
    return parse(text, extraction_config=[LatexExtractionConfig()], parsing_timeout=None)


@lru_cache(maxsize=65536)
def answers_equivalent(a: str, b: str) -> bool:
    """Whether two extracted answers denote the same value (symmetric)."""
    if a.strip() == b.strip():
        return True
    na, nb = canonical_number(a), canonical_number(b)
    if na is not None and nb is not None:
        return na == nb
    if _too_complex(a) or _too_complex(b):
        return False
    from math_verify import verify

    try:
        with _deadline(VERDICT_TIMEOUT_S):
            pa, pb = _parsed(a), _parsed(b)
            if not pa or not pb:
                return False
            return bool(verify(pa, pb, timeout_seconds=None) or verify(pb, pa, timeout_seconds=None))
    except _VerdictTimeout:
        return False  # undecided in time: not equivalent


def is_correct(response: str, gold: str) -> bool:
    answer = extract_answer(response)
    return answer is not None and answers_equivalent(gold, answer)


def cluster_answers(answers: list[str | None], equivalent=None) -> list[int | None]:
    """Cluster id per answer (None for an unparseable response), ids numbered in order of first
    appearance. Answers join the first cluster whose representative is ``equivalent`` (default
    :func:`answers_equivalent`); number-like answers are keyed canonically so the pairwise checks
    run only between distinct forms."""
    equivalent = equivalent or answers_equivalent
    ids: list[int | None] = []
    representatives: list[str] = []
    by_key: dict[str, int] = {}
    for answer in answers:
        if answer is None:
            ids.append(None)
            continue
        key = canonical_number(answer) or answer.strip()
        if key not in by_key:
            match = next(
                (c for c, rep in enumerate(representatives) if equivalent(rep, answer)),
                None,
            )
            if match is None:
                match = len(representatives)
                representatives.append(answer)
            by_key[key] = match
        ids.append(by_key[key])
    return ids


class Grader:
    """How a task reads and checks answers; this one is the generic maths grader (extraction as
    :func:`extract_answer`, equivalence by :func:`answers_equivalent`). Tasks with other rules
    (multiple choice) override ``extract_answer`` and ``equivalent``. The loop calls the batch
    methods ``grade_groups`` and ``check``; :class:`tempo_bench.grading.pool.GradingPool` runs the
    same ones in worker processes with a per-item timeout."""

    name = "generic"

    def extract_answer(self, text: str) -> str | None:
        return extract_answer(text)

    def equivalent(self, gold: str, extracted: str | None) -> bool:
        return extracted is not None and answers_equivalent(gold, extracted)

    def is_correct(self, response: str, gold: str) -> bool:
        """Whether ``response`` (a full model output) answers ``gold``."""
        return self.equivalent(gold, self.extract_answer(response))

    def grade_group(self, texts: list[str]) -> tuple[list[str | None], list[int | None]]:
        """Extracted answers of one question's samples and their clusters."""
        answers = [self.extract_answer(t) for t in texts]
        return answers, cluster_answers(answers, self.equivalent)

    def grade_groups(self, groups: list[list[str]]) -> tuple[list[list[str | None]], list[list[int | None]]]:
        graded = [self.grade_group(texts) for texts in groups]
        return [a for a, _ in graded], [c for _, c in graded]

    def check_group(self, gold: str, answers: list[str | None]) -> list[bool]:
        return [self.equivalent(gold, a) for a in answers]

    def check(self, golds: list[str], answers: list[list[str | None]]) -> list[list[bool]]:
        """Correctness [G][n] of extracted answers against each group's gold answer."""
        return [self.check_group(g, row) for g, row in zip(golds, answers)]

    # -- what the loop, the critic, the evaluation and the probes call --------------------------
    def grade_generation(self, generation) -> tuple[list[list[str | None]], list[list[int | None]]]:
        """Extracted answers and answer clusters of each prompt's samples in a
        :class:`~tempo_bench.rollout.base.Generation`: two [G][N] nested lists."""
        return self.grade_groups([[generation.texts[r] for r in generation.group(i)]
                                  for i in range(generation.num_prompts)])

    def correctness(self, golds: list[str], answers: list[list[str | None]]) -> np.ndarray:
        """[G, N] bool: each group's extracted answers against its gold answer."""
        if not golds:
            return np.zeros((0, 0), dtype=bool)
        return np.array(self.check(golds, answers), dtype=bool).reshape(len(golds), -1)

    def close(self) -> None:
        return None


GENERIC = Grader()


class NumericGrader(Grader):
    """For tasks whose gold answers are integers or decimals (the toy): numbers compare exactly
    on their canonical form, anything else only as the identical string. math-verify is never
    called: a malformed final answer ("|66", "14J1") costs no sympy parse, and cannot be read as a
    number it does not spell."""

    name = "numeric"

    def equivalent(self, gold: str, extracted: str | None) -> bool:
        if extracted is None:
            return False
        a, b = canonical_number(gold), canonical_number(extracted)
        return a == b if a is not None and b is not None else gold.strip() == extracted.strip()


NUMERIC = NumericGrader()
