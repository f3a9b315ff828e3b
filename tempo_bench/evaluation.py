"""Grading of generations and evaluation on the test questions (metrics code: it may read the
hidden AnswerKey)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from tempo_bench import metrics as M
from tempo_bench.grading import cluster_answers
from tempo_bench.rollout.base import Generation, RolloutBackend, SamplingParams
from tempo_bench.tasks.base import AnswerKey, Question


def grade(
    generation: Generation, extract: Callable[[str], str | None]
) -> tuple[list[list[str | None]], list[list[int | None]]]:
    """Extracted answers and answer clusters per prompt group: two [P][n] nested lists."""
    answers, clusters = [], []
    for i in range(generation.num_prompts):
        group = [extract(generation.texts[r]) for r in generation.group(i)]
        answers.append(group)
        clusters.append(cluster_answers(group))
    return answers, clusters


def evaluate(
    backend: RolloutBackend,
    questions: list[Question],
    answer_key: AnswerKey,
    cfg,
    max_new_tokens: int,
    extract: Callable[[str], str | None] | None = None,
) -> tuple[dict[str, float], list[dict], int]:
    """k samples per test question at ``cfg.temperature`` (+ one greedy answer when cfg.greedy).

    Returns (metrics, per-sample rows for the JSONL artefact, tokens generated)."""
    from tempo_bench.grading import extract_answer

    extract = extract or extract_answer
    prompts = [q.prompt for q in questions]
    sampled = backend.generate(
        prompts, SamplingParams(n=cfg.k, temperature=cfg.temperature, max_new_tokens=max_new_tokens)
    )
    answers, clusters = grade(sampled, extract)
    correct = np.array([[answer_key.is_correct_answer(q.id, a) for a in row]
                        for q, row in zip(questions, answers)])
    values = {
        "eval/mean_at_k": M.mean_at_k(correct),
        "eval/maj_at_k": M.maj_at_k(clusters, correct),
        "eval/pass_at_k": M.pass_at_k(correct, cfg.k),
        **{f"eval/pass_at_{j}": M.pass_at_k(correct, j) for j in range(1, cfg.k + 1)},
        "eval/distinct_answers": M.distinct_answers(clusters),
        "eval/answer_entropy": M.answer_entropy(clusters),
        "eval/distinct_2": M.distinct_2([[sampled.texts[r] for r in sampled.group(i)]
                                         for i in range(len(questions))]),
    }
    tokens = sampled.num_tokens
    rows = [
        {"question_id": q.id, "prompt": q.prompt, "sample": j, "response": sampled.texts[r],
         "answer": answers[i][j], "cluster": clusters[i][j], "correct": bool(correct[i, j]),
         "greedy": False}
        for i, q in enumerate(questions) for j, r in enumerate(sampled.group(i))
    ]
    if cfg.greedy:
        greedy = backend.generate(prompts, SamplingParams(n=1, greedy=True, max_new_tokens=max_new_tokens))
        greedy_answers = [extract(t) for t in greedy.texts]
        greedy_correct = [answer_key.is_correct_answer(q.id, a) for q, a in zip(questions, greedy_answers)]
        values["eval/greedy_acc"] = float(np.mean(greedy_correct))
        tokens += greedy.num_tokens
        rows += [
            {"question_id": q.id, "prompt": q.prompt, "sample": 0, "response": t, "answer": a,
             "cluster": None, "correct": bool(c), "greedy": True}
            for q, t, a, c in zip(questions, greedy.texts, greedy_answers, greedy_correct)
        ]
    return values, rows, tokens
