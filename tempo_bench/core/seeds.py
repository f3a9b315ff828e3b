"""Seeds: every seeded draw of a run comes from (run seed, step, named stream), so each step's
sampling is reproducible on its own (a resumed run needs no RNG state) and one stream's draws
never shift another's (evaluation never moves the training samples)."""

from __future__ import annotations

import random
from enum import Enum
from typing import TypeVar

T = TypeVar("T")


class Stream(Enum):
    """The named random streams: (id, seed multiplier, step multiplier, offset). The run's own
    streams share one form; the critic's and the RLVR stage's keep the constants they were
    recorded with, so logged runs reproduce bit for bit."""

    TRAIN = (1, 1_000_003, 7919, 104_729)  # a training step's rollouts and updates
    EVAL = (2, 1_000_003, 7919, 2 * 104_729)  # evaluation samples
    QUESTION_ORDER = (3, 1_000_003, 7919, 3 * 104_729)  # the per-epoch permutation of the questions
    ESTEP_QUESTIONS = (4, 7_919, 1, 0)  # which labeled questions an E-step draws
    ESTEP_ROLLOUT = (5, 104_729, 1, 0)  # an E-step's rollouts
    CRITIC_FIT = (6, 31, 1, 0)  # the order of a critic fit's minibatches
    PROBE_ROLLOUT = (7, 15_485_863, 1, 0)  # the labeled probe's rollouts
    CRITIC_WARMUP = (8, 1, 0, 0)  # the starting critic's warm-up: the critic's own seed, once
    RLVR_STEP = (9, 1_000_003, 1, 0)  # a step of the toy's RLVR stage
    RLVR_SCORE = (10, 7_919, 1, 0)  # the RLVR stage's held-out scoring
    RANDOM_REWARD = (11, 1_000_003, 7919, 4 * 104_729)  # the random_reward control's rewards
    CRITIC_INIT = (12, 1, 0, 5 * 104_729)  # a fresh LoRA critic's adapter and head: the critic's seed
    QUESTION_SAMPLES = (13, 1_000_003, 7919, 6 * 104_729)  # a step's per-question sampling seeds


def question_seeds(seed: int, step: int, count: int, stream: Stream = Stream.QUESTION_SAMPLES) -> tuple[int, ...]:
    """One sampling seed per question of a step, by the question's position in the step's list."""
    first = step_seed(seed, step, stream)
    return tuple((first + 15_485_863 * position) % (2**63) for position in range(count))


def step_seed(seed: int, step: int, stream: Stream) -> int:
    """The seed of draw ``stream`` at ``step`` of a run seeded ``seed``."""
    _, per_seed, per_step, offset = stream.value
    return (seed * per_seed + step * per_step + offset) % (2**63)


def questions_for_step(questions: list[T], step: int, per_step: int, seed: int) -> list[T]:
    """The questions of training step ``step`` (1-based): epochs of seeded permutations."""
    out = []
    for slot in range((step - 1) * per_step, step * per_step):
        epoch, pos = divmod(slot, len(questions))
        order = list(range(len(questions)))
        random.Random(step_seed(seed, epoch, Stream.QUESTION_ORDER)).shuffle(order)
        out.append(questions[order[pos]])
    return out
