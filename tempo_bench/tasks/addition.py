"""The embedded reasoning task: column addition written out step by step.

A question is ``Q:347+285`` and a worked solution adds one column per line, least significant
first, carrying the running answer at the end of each line::

    Q:347+285
    7+5=12 |2
    4+8+1=13 |32
    3+2+1=6 |632
    #### 632

The final answer is extracted exactly as for GSM8K (``#### N``), by the same grading code as real
math benchmarks. A column whose digits sum to 9 while a carry comes in (``4+5+1=10``) is a *chain
carry*; the pretraining corpus plants a systematic misconception there: with probability
``misconception_rate`` the solution forgets the incoming carry (``4+5=9``), and the carry is lost
for the rest of the sum. A model pretrained on it errs consistently on chain-carry questions, so a
majority vote over its samples can be confidently wrong, as with real models' systematic errors.

Difficulty knob: the number of digits of each operand, and the share of chain-carry questions.
Everything is deterministic from a seed.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass

PROMPT_PREFIX = "Q:"


@dataclass(frozen=True)
class Addition:
    """One toy question: ``a + b``."""

    a: int
    b: int

    @property
    def prompt(self) -> str:
        return f"{PROMPT_PREFIX}{self.a}+{self.b}\n"

    @property
    def answer(self) -> str:
        return str(self.a + self.b)

    @property
    def has_chain_carry(self) -> bool:
        return any(col.chain for col in columns(self.a, self.b))


@dataclass(frozen=True)
class Column:
    x: int
    y: int
    carry_in: int

    @property
    def chain(self) -> bool:
        """Digits summing to 9 with a carry coming in: the planted misconception's trigger."""
        return self.carry_in == 1 and self.x + self.y == 9


def columns(a: int, b: int) -> list[Column]:
    """The columns of ``a + b`` with their true incoming carries, least significant first."""
    da, db = str(a)[::-1], str(b)[::-1]
    width = max(len(da), len(db))
    out, carry = [], 0
    for i in range(width):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        out.append(Column(x, y, carry))
        carry = (x + y + carry) // 10
    return out


def solution(q: Addition, forget_chain_carry: bool = False, drop_carry_at: int | None = None,
             slip_at: int | None = None, slip_by: int = 0) -> str:
    """The worked solution (the response after the prompt). With ``forget_chain_carry`` every chain
    carry is dropped, the misconception the corpus plants; the rest is computed consistently from
    the (possibly wrong) carries, so the wrong answer is the one a person with it would write.
    The verification corpus plants other errors too: ``drop_carry_at`` forgets the carry coming
    into that column (any carry, not only a chain's), ``slip_at`` writes that column's digit
    ``slip_by`` too high (mod 10)."""
    da, db = str(q.a)[::-1], str(q.b)[::-1]
    width = max(len(da), len(db))
    lines, partial, carry = [], "", 0
    for i in range(width):
        x = int(da[i]) if i < len(da) else 0
        y = int(db[i]) if i < len(db) else 0
        if carry and (i == drop_carry_at or (forget_chain_carry and x + y == 9)):
            carry = 0
        s = x + y + carry
        lhs = f"{x}+{y}+1" if carry else f"{x}+{y}"
        partial = str((s + (slip_by if i == slip_at else 0)) % 10) + partial
        lines.append(f"{lhs}={s} |{partial}")
        carry = s // 10
    if carry:
        partial = "1" + partial
        lines.append(f"0+0+1=1 |{partial}")
    answer = partial.lstrip("0") or "0"
    lines.append(f"#### {answer}")
    return "\n".join(lines) + "\n"


def final_answer(response: str) -> str | None:
    """The ``#### N`` answer of a worked solution (None if it has none)."""
    return response.split("#### ")[1].split("\n")[0].strip() if "#### " in response else None


def sample_question(rng: random.Random, digits: int, chain: bool | None = None) -> Addition:
    """A question whose operands have ``digits`` digits (leading digit non-zero). With ``chain``
    True/False, rejection-sample until the question does/does not contain a chain carry."""
    lo, hi = 10 ** (digits - 1) if digits > 1 else 0, 10**digits - 1
    for _ in range(10_000):
        q = Addition(rng.randint(lo, hi), rng.randint(lo, hi))
        if chain is None or q.has_chain_carry == chain:
            return q
    raise ValueError(f"could not sample a {digits}-digit question with chain={chain}")


def sample_questions(
    n: int, seed: int, digits: tuple[int, ...], chain_fraction: float | None
) -> list[Addition]:
    """``n`` distinct questions, digits drawn uniformly from ``digits``. ``chain_fraction``: the
    exact share of chain-carry questions (None: their natural frequency)."""
    if not 0 <= (chain_fraction or 0) <= 1:
        raise ValueError(f"chain_fraction must be in [0, 1], got {chain_fraction}")
    if chain_fraction and max(digits) < 2:
        raise ValueError(f"a chain carry needs operands of 2+ digits; digits {list(digits)} cannot hold one")
    rng = random.Random(seed)
    n_chain = None if chain_fraction is None else round(n * chain_fraction)
    out: list[Addition] = []
    seen: set[Addition] = set()
    while len(out) < n:
        chain = None if n_chain is None else len(out) < n_chain
        # a chain carry needs two columns: chain questions draw from the digit counts above 1
        q = sample_question(rng, rng.choice([d for d in digits if d > 1] if chain else digits), chain)
        if q not in seen:
            seen.add(q)
            out.append(q)
    rng.shuffle(out)
    return out


def pretraining_corpus(
    n: int, seed: int, digits: tuple[int, ...], misconception_rate: float, chain_fraction: float
) -> list[str]:
    """Prompt + worked solution texts for pretraining. A share ``chain_fraction`` of questions is
    forced to contain a chain carry (naturally rare: a tiny model then learns the general carry
    rule and never the exception); chain-carry questions carry the misconception with
    probability ``misconception_rate``."""
    rng = random.Random(seed)
    texts = []
    for _ in range(n):
        digit_count = rng.choice([d for d in digits if d > 1])
        chain = True if rng.random() < chain_fraction else None
        q = sample_question(rng, rng.choice(digits) if chain is None else digit_count, chain)
        forget = q.has_chain_carry and rng.random() < misconception_rate
        texts.append(q.prompt + solution(q, forget_chain_carry=forget))
    return texts


def data_hash(texts: list[str]) -> str:
    return hashlib.sha256(json.dumps(texts).encode()).hexdigest()[:16]
