"""Seeds: every seeded draw of a run comes from (run seed, named stream, step), so each step's
sampling is reproducible on its own (a resumed run needs no RNG state) and one stream's draws
never shift another's (evaluation never moves the training samples).

The seed of a draw is the first word of ``numpy.random.SeedSequence((run seed, stream id, step))``:
a hash of the whole triple, so no two (seed, stream, step) triples share a seed by construction
(an arithmetic form such as ``seed * a + step * b + offset`` always has such pairs: tested over
seeds 0-4 and steps 0-200 in tests/test_seeds.py).
"""

from __future__ import annotations

import random
from enum import Enum
from typing import TypeVar

import numpy as np

T = TypeVar("T")

# the seeding scheme's version: part of every run identity, cache key and checkpoint, so runs,
# cached critics and checkpoints of another scheme are never mixed with this one's. 1: the
# arithmetic form (until 2026-12-04); 2: hashed (seed, stream, step) triples.
SEEDING = 2


class Stream(Enum):
    """The named random streams of a run; the value is the stream's id in the seed triple. Never
    renumber one: that moves every logged number of the runs that use it."""

    TRAIN = 1  # a training step's rollouts and updates
    EVAL = 2  # evaluation samples
    QUESTION_ORDER = 3  # the per-epoch permutation of the questions (step = the epoch)
    ESTEP_QUESTIONS = 4  # which labeled questions an E-step draws
    ESTEP_ROLLOUT = 5  # an E-step's rollouts
    CRITIC_FIT = 6  # the order of a critic fit's minibatches
    PROBE_ROLLOUT = 7  # the labeled probe's rollouts
    CRITIC_WARMUP = 8  # the starting critic's warm-up: the critic's own seed, step 0
    RANDOM_REWARD = 11  # the random_reward control's rewards
    CRITIC_INIT = 12  # a fresh LoRA critic's adapter and head: the critic's seed, step 0
    QUESTION_SAMPLES = 13  # a step's per-question sampling seeds
    LABELED_ORDER = 14  # the per-epoch permutation of the labeled pool's M-step questions


def _words(seed: int, stream: Stream, step: int, count: int) -> tuple[int, ...]:
    if seed < 0 or step < 0:
        raise ValueError(f"seeds and steps are non-negative (got seed {seed}, step {step})")
    state = np.random.SeedSequence((seed, stream.value, step)).generate_state(count, np.uint64)
    return tuple(int(word) >> 1 for word in state)  # 63 bits: any torch or numpy seed takes it


def step_seed(seed: int, step: int, stream: Stream) -> int:
    """The seed of draw ``stream`` at ``step`` of a run seeded ``seed``."""
    return _words(seed, stream, step, 1)[0]


def question_seeds(seed: int, step: int, count: int) -> tuple[int, ...]:
    """One sampling seed per question of a step, by the question's position in the step's list."""
    return _words(seed, Stream.QUESTION_SAMPLES, step, count)


def questions_for_step(questions: list[T], step: int, per_step: int, seed: int,
                       stream: Stream = Stream.QUESTION_ORDER, seeding=step_seed) -> list[T]:
    """The questions of training step ``step`` (1-based): epochs of permutations, epoch e's seeded
    by ``seeding(seed, e, stream)``."""
    out = []
    for slot in range((step - 1) * per_step, step * per_step):
        epoch, pos = divmod(slot, len(questions))
        order = list(range(len(questions)))
        random.Random(seeding(seed, epoch, stream)).shuffle(order)
        out.append(questions[order[pos]])
    return out
