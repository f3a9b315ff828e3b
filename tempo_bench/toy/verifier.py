"""The critic's knowledge as a knob of the toy: a verifier backbone pretrained on a VERIFICATION
corpus instead of the policy's own.

The policy's corpus teaches the chain-carry misconception as the rule, so a critic grown from it
(the symmetric regime) shares the policy's blind spot. The verification corpus holds worked
additions, about half of them with one planted error, each followed by a verdict::

    Q:347+285
    7+5=12 |2
    4+8=12 |22          <- a dropped carry
    3+2+1=6 |622
    #### 622
    <eos>N

The verdict token comes right after the response's end-of-sequence token, which is exactly the
position where the critic reads the value of a complete response: a value head initialised from
the verdict tokens' output embeddings (``head_init: verdict``) starts as the verifier's own
judgement, V = scale * (logit(Y) - logit(N)), and E-steps fit it to D_L outcomes from there.

What the corpus covers (operand digits, error kinds, the share of wrong solutions) is in the
spec and the manifest. No test question enters it: questions of the shipped toy presets' test
sets (``exclude_presets``) are skipped when the corpus is drawn, so the verifier has never seen a
test question, its answer, or a verdict on it (a test asserts it).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from tempo_bench.config import load_config
from tempo_bench.tasks.addition import (
    Addition,
    columns,
    final_answer,
    sample_question,
    solution,
)
from tempo_bench.tasks.toy import toy_test_questions

ERROR_KINDS = ("chain", "carry", "slip")  # forgotten chain carry, any dropped carry, a slipped digit
VERDICTS = {"correct": "Y", "wrong": "N"}


@dataclass
class VerifierSpec:
    """The verifier backbone's build: corpus and recipe (stored in its manifest)."""

    seed: int = 0
    hidden_size: int = 64
    num_layers: int = 4
    num_heads: int = 4
    intermediate_size: int = 256
    max_position_embeddings: int = 192
    corpus_size: int = 40_000
    corpus_digits: tuple[int, ...] = (1, 2, 3)
    error_kinds: tuple[str, ...] = ERROR_KINDS
    wrong_fraction: float = 0.5
    corpus_chain_fraction: float = 0.4  # questions of 2+ digits forced to hold a chain carry
    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    warmup_steps: int = 100
    weight_decay: float = 0.01
    verdict_tokens: dict = field(default_factory=lambda: dict(VERDICTS))
    exclude_presets: tuple[str, ...] = ("toy", "toy-symmetric")  # their test questions never enter the corpus

    def __post_init__(self):
        bad = [k for k in self.error_kinds if k not in ERROR_KINDS]
        if bad or not self.error_kinds:
            raise ValueError(f"VerifierSpec.error_kinds: unknown {bad or '(empty)'}; allowed: {', '.join(ERROR_KINDS)}")
        bad = [d for d in self.corpus_digits if not 1 <= d <= 6]
        if bad or not self.corpus_digits:
            raise ValueError(f"VerifierSpec.corpus_digits: digit counts between 1 and 6 (the tokenizer's "
                             f"positions hold 6-digit solutions), got {bad or '(empty)'}")
        if not 0 <= self.wrong_fraction <= 1 or not 0 <= self.corpus_chain_fraction <= 1:
            raise ValueError("VerifierSpec.wrong_fraction and corpus_chain_fraction must be in [0, 1]")


def wrong_solution(q: Addition, rng: random.Random, kinds: tuple[str, ...]) -> str:
    """A worked solution with one planted error of a kind drawn from ``kinds``: a chain-carry error
    where the question has no chain carry falls back to a dropped carry (if that kind is allowed),
    a dropped carry where no column receives one falls back to a slipped digit. Every planted
    error changes the answer."""
    cols = columns(q.a, q.b)
    carried = [i for i, c in enumerate(cols) if c.carry_in]
    kind = rng.choice(kinds)
    if kind == "chain" and not q.has_chain_carry:
        kind = "carry" if "carry" in kinds else "slip"
    if kind == "carry" and not carried:  # nothing to drop: the error would not be one
        kind = "slip"
    if kind == "chain":
        return solution(q, forget_chain_carry=True)
    if kind == "carry":
        return solution(q, drop_carry_at=rng.choice(carried))
    return solution(q, slip_at=rng.randrange(len(cols)), slip_by=rng.randint(1, 9))


def verification_corpus(spec: VerifierSpec) -> list[tuple[str, str, bool]]:
    """(prompt, worked solution, correct) triples: a share ``wrong_fraction`` with one planted
    error (a planted error that happens not to change the answer, e.g. a dropped carry into a
    column that carries anyway, is labelled by its answer)."""
    rng = random.Random(spec.seed)
    excluded = excluded_questions(spec.exclude_presets)
    out = []
    while len(out) < spec.corpus_size:
        digits = rng.choice(spec.corpus_digits)
        chain = True if digits > 1 and rng.random() < spec.corpus_chain_fraction else None
        q = sample_question(rng, digits, chain)
        if q in excluded:
            continue
        text = wrong_solution(q, rng, spec.error_kinds) if rng.random() < spec.wrong_fraction else solution(q)
        out.append((q.prompt, text, final_answer(text) == q.answer))
    return out


def excluded_questions(presets: tuple[str, ...]) -> set[Addition]:
    """The test questions (D_U) of these toy presets: the verifier never sees them."""
    out: set[Addition] = set()
    for name in presets:
        task = load_config(name).task
        if task.name == "toy_addition":
            out |= set(toy_test_questions(task))
    return out


def encode_verification(corpus: list[tuple[str, str, bool]], tokenizer, verdicts: dict) -> list[tuple[list[int], int]]:
    """(prompt + solution + EOS + verdict token, prompt length) per example; the loss covers the
    solution, the EOS and the verdict (the verifier also learns to write solutions, right and
    wrong, which is how it learns the columns)."""
    yes, no = (tokenizer.convert_tokens_to_ids(verdicts[k]) for k in ("correct", "wrong"))
    out = []
    for prompt, text, correct in corpus:
        ids = tokenizer(prompt + text, add_special_tokens=False)["input_ids"]
        out.append((ids + [tokenizer.eos_token_id, yes if correct else no], len(prompt)))
    return out


def corpus_texts(corpus: list[tuple[str, str, bool]], verdicts: dict) -> list[str]:
    """The corpus as texts (its data hash)."""
    return [p + t + "<eos>" + verdicts["correct" if ok else "wrong"] for p, t, ok in corpus]


def verdict_token_ids(tokenizer, verdicts: dict) -> tuple[int, int]:
    return tuple(tokenizer.convert_tokens_to_ids(verdicts[k]) for k in ("correct", "wrong"))
