"""Seeds: every seeded draw of a run comes from (run seed, step, named stream), so each step's
sampling is reproducible on its own (a resumed run needs no RNG state) and one stream's draws
never shift another's (evaluation never moves the training samples)."""

from __future__ import annotations

import random
from enum import IntEnum
from typing import TypeVar

T = TypeVar("T")


class Stream(IntEnum):
    """The named random streams of a run."""

    TRAIN = 1  # a training step's rollouts and updates
    EVAL = 2  # evaluation samples
    QUESTION_ORDER = 3  # the per-epoch permutation of the questions


def step_seed(seed: int, step: int, stream: int) -> int:
    """A seed per (run seed, step, stream)."""
    return (seed * 1_000_003 + step * 7919 + int(stream) * 104_729) % (2**63)


def questions_for_step(questions: list[T], step: int, per_step: int, seed: int) -> list[T]:
    """The questions of training step ``step`` (1-based): epochs of seeded permutations."""
    out = []
    for slot in range((step - 1) * per_step, step * per_step):
        epoch, pos = divmod(slot, len(questions))
        order = list(range(len(questions)))
        random.Random(step_seed(seed, epoch, Stream.QUESTION_ORDER)).shuffle(order)
        out.append(questions[order[pos]])
    return out
