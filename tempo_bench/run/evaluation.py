"""Grading of generations and evaluation on the test questions (metrics code: it may read the
hidden AnswerKey)."""

from __future__ import annotations

import numpy as np

from tempo_bench.core import metrics as M
from tempo_bench.grading.answers import GENERIC, Grader
from tempo_bench.rollout.base import RolloutBackend, SamplingParams
from tempo_bench.tasks.base import AnswerKey, Question


def eval_metric_names(cfg) -> set[str]:
    """The metric keys ``evaluate`` logs for an EvalConfig (a sweep checks its objective here
    before its first trial)."""
    names = {"eval/mean_at_k", "eval/maj_at_k", "eval/pass_at_k", "eval/distinct_answers",
             "eval/answer_entropy", "eval/distinct_2", *(f"eval/pass_at_{j}" for j in range(1, cfg.k + 1)),
             *(f"eval/{name}" for name in M.LENGTH_STATS)}
    names |= {"eval/greedy_acc"} if cfg.greedy else set()
    return names | {extra_key(extra.key(), name) for extra in cfg.tasks for name in names}


def extra_key(name: str, key: str) -> str:
    """The key of an extra benchmark's metric: eval/mean_at_k of ``name`` -> eval_<name>/mean_at_k."""
    return f"eval_{name}/" + key.split("/", 1)[1]


def question_accuracy(rows: list[dict]) -> dict[str, float]:
    """mean@k per test question from an evaluation's per-sample rows (the test set's sampled
    rows: not greedy, not an eval.tasks benchmark's)."""
    by_question: dict[str, list[bool]] = {}
    for row in rows:
        if not row["greedy"] and "task" not in row:
            by_question.setdefault(row["question_id"], []).append(row["correct"])
    return {question: float(np.mean(correct)) for question, correct in by_question.items()}


def question_table(accuracy: dict[int, dict[str, float]]) -> str:
    """The per-question table of a run as CSV: mean@k at the first and the last evaluation of
    ``accuracy`` (step -> question -> mean@k), the change and the flip (core.metrics.question_flips)."""
    import csv
    import io

    first, last = min(accuracy), max(accuracy)
    out = io.StringIO()
    table = csv.writer(out, lineterminator="\n")
    table.writerow(["question_id", f"accuracy_step_{first}", f"accuracy_step_{last}", "change", "flip"])
    table.writerows([r["question_id"], f"{r['first']:.4f}", f"{r['last']:.4f}", f"{r['change']:+.4f}", r["flip"]]
                    for r in M.question_flips(accuracy[first], accuracy[last]))
    return out.getvalue()


def evaluate_extras(backend: RolloutBackend, extras, cfg, max_new_tokens: int) -> tuple[dict, list[dict], int]:
    """The benchmarks evaluated beside the test set (eval.tasks; a TaskData each, metrics only):
    their metrics under their own keys, their per-sample rows tagged with the task, their tokens."""
    values, rows, tokens = {}, [], 0
    for extra in extras:
        more, more_rows, more_tokens = evaluate(backend, extra.test, extra.answer_key, cfg, max_new_tokens,
                                                extra.grader)
        values.update({extra_key(extra.name, key): value for key, value in more.items()})
        rows += [{**row, "task": extra.name} for row in more_rows]
        tokens += more_tokens
    return values, rows, tokens


def evaluate(
    backend: RolloutBackend,
    questions: list[Question],
    answer_key: AnswerKey,
    cfg,
    max_new_tokens: int,
    grader: Grader = GENERIC,
) -> tuple[dict[str, float], list[dict], int]:
    """k samples per test question at ``cfg.temperature`` and ``cfg.top_p`` (+ one greedy answer
    when cfg.greedy), each up to ``max_new_tokens``.

    Returns (metrics, per-sample rows for the JSONL artefact, tokens generated)."""
    prompts = [q.prompt for q in questions]
    sampled = backend.generate(
        prompts, SamplingParams(n=cfg.k, temperature=cfg.temperature, top_p=cfg.top_p, max_new_tokens=max_new_tokens)
    )
    answers, clusters = grader.grade_generation(sampled)
    golds = [answer_key.answer(q.id) for q in questions]
    correct = grader.correctness(golds, answers)
    values = {
        "eval/mean_at_k": M.mean_at_k(correct),
        "eval/maj_at_k": M.maj_at_k(clusters, correct),
        "eval/pass_at_k": M.pass_at_k(correct, cfg.k),
        **{f"eval/pass_at_{j}": M.pass_at_k(correct, j) for j in range(1, cfg.k + 1)},
        "eval/distinct_answers": M.distinct_answers(clusters),
        "eval/answer_entropy": M.answer_entropy(clusters),
        "eval/distinct_2": M.distinct_2([[sampled.texts[r] for r in sampled.group(i)]
                                         for i in range(len(questions))]),
        **M.response_lengths([len(ids) for ids in sampled.token_ids], sampled.finished, "eval"),
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
        greedy_answers = [row[0] for row in grader.grade_generation(greedy)[0]]
        greedy_correct = grader.correctness(golds, [[a] for a in greedy_answers])[:, 0].tolist()
        values["eval/greedy_acc"] = float(np.mean(greedy_correct))
        tokens += greedy.num_tokens
        rows += [
            {"question_id": q.id, "prompt": q.prompt, "sample": 0, "response": t, "answer": a,
             "cluster": None, "correct": bool(c), "greedy": True}
            for q, t, a, c in zip(questions, greedy.texts, greedy_answers, greedy_correct)
        ]
    return values, rows, tokens
