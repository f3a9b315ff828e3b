"""Seed streams: no two draws of any runs share a seed, and a step's draw depends on nothing else."""

import itertools

import pytest

from tempo_bench.core.seeds import Stream, question_seeds, questions_for_step, step_seed

SEEDS, STEPS, QUESTIONS = range(5), range(201), 16


def test_no_two_draws_of_seeds_0_to_4_and_steps_0_to_200_share_a_seed():
    """Every stream at every step of run seeds 0-4, and every question seed of those steps: all
    distinct (the old arithmetic form gave E-step questions, E-step rollouts, the critic fit and
    the probe seed = step at run seed 0, and seed 1's critic fit at step 0 = seed 0's E-step
    rollouts at step 31)."""
    draws = {}
    for seed, step in itertools.product(SEEDS, STEPS):
        for stream in Stream:
            draws.setdefault(step_seed(seed, step, stream), []).append((seed, stream.name, step))
        for position, value in enumerate(question_seeds(seed, step, QUESTIONS)[1:], start=1):
            draws.setdefault(value, []).append((seed, "question", step, position))
    shared = {value: where for value, where in draws.items() if len(where) > 1}
    # position 0 of a step's question seeds is the QUESTION_SAMPLES stream's own draw: the one allowed
    assert not shared, f"{len(shared)} seeds shared, e.g. {next(iter(shared.values()), None)}"
    assert all(0 <= value < 2**63 for value in draws)


def test_a_draw_depends_on_its_seed_stream_and_step_alone():
    assert step_seed(3, 17, Stream.TRAIN) == step_seed(3, 17, Stream.TRAIN)
    assert question_seeds(3, 17, 4) == question_seeds(3, 17, 9)[:4], "more questions never move the first ones"
    assert question_seeds(3, 17, 1)[0] == step_seed(3, 17, Stream.QUESTION_SAMPLES)


def test_a_runs_unlabeled_and_labeled_question_orders_are_separate_streams():
    """The labeled pool's order used run seed + 1 (so seed 0's labeled order was seed 1's
    unlabeled order); now each is its own stream of the same seed."""
    questions = list(range(40))
    unlabeled_of_seed_1 = [questions_for_step(questions, step, 8, 1) for step in range(1, 6)]
    labeled_of_seed_0 = [questions_for_step(questions, step, 8, 0, Stream.LABELED_ORDER) for step in range(1, 6)]
    assert unlabeled_of_seed_1 != labeled_of_seed_0
    seen = [q for step in range(1, 6) for q in questions_for_step(questions, step, 8, 0, Stream.LABELED_ORDER)]
    assert sorted(seen) == questions, "one epoch visits every question once"


def test_negative_seeds_are_refused():
    with pytest.raises(ValueError, match="non-negative"):
        step_seed(-1, 0, Stream.TRAIN)
