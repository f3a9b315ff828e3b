"""What runs in one process may share, held in one explicit object: compare and sweep pass one
to every run they start in a process; a plain run makes its own. Nothing is cached behind a
caller's back, and a cache entry's key says everything its value depends on."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field


@dataclass
class RunCaches:
    """initial_evals: the initial policy's evaluation (it depends on no method or trial setting),
    keyed by :func:`initial_eval_key`; starting_critics: the warmed-up critic every critic method
    starts from (``tempo_bench.critic.ops.starting_critic_key``); base_models: base weights read
    once and copied per run on CPU (``tempo_bench.policy.model.load_policy``)."""

    initial_evals: dict[str, tuple] = field(default_factory=dict)
    starting_critics: dict[str, object] = field(default_factory=dict)
    base_models: dict[tuple, object] = field(default_factory=dict)


def task_fingerprint(task) -> str:
    """The test questions, prompts and hidden answers of a task: two tasks with one name but other
    data (a test's shuffled answer key) never share an evaluation."""
    digest = hashlib.sha256(task.name.encode())
    for question in task.test:
        digest.update(json.dumps([question.id, question.prompt, task.answer_key.answer(question.id)]).encode())
    return digest.hexdigest()[:16]


def initial_eval_key(config, task) -> str:
    """The initial policy's evaluation depends on the model, the task, the evaluation settings,
    the run's seed, the rollout backend and response length (tempo_bench/core/effects.py picks
    the settings of those that shape what is computed), and the test questions themselves."""
    from tempo_bench.core.effects import computed_by
    from tempo_bench.core.seeds import SEEDING

    settings = computed_by(config, "model", "task", "eval", "seed", "rollout.backend", "rollout.max_new_tokens")
    return json.dumps([SEEDING, settings, task_fingerprint(task)], sort_keys=True, default=str)
