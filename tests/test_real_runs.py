"""Runs on real benchmark files with the toy model: the loader, the task's grader, the labeled
pool, chat templates and the grading worker pool, through the same loop as every run."""

import json
import time
from pathlib import Path

import pytest
from pool_helpers import sleep_then_echo

from tempo_bench.config import load_config
from tempo_bench.core.loggers import MemoryLogger
from tempo_bench.grading.pool import GradingPool, grader_by_name
from tempo_bench.run.run import run_ttt
from tempo_bench.tasks import get_task, load_task_data

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark files not found at {DATA}")

GSM8K_RUN = [
    f"task={{name: gsm8k, source: {DATA}/gsm8k/test.jsonl, limit: 6, labeled: gsm8k_train, "
    f"labeled_source: {DATA}/gsm8k/train.jsonl, labeled_size: 24}}",
    "train.steps=2", "train.prompts_per_step=3", "rollout.n=2", "rollout.max_new_tokens=12",
    "eval.every=2", "eval.k=2", "critic.probe_questions=4", "critic.warmup_questions=8",
    "critic.warmup_samples=2", "critic.estep_questions=4", "critic.estep_samples=2",
    "methods.tempo.labeled_prompts_per_step=2",
]


@needs_data
def test_real_task_data_keeps_test_questions_out_of_the_labeled_pool():
    config = load_config("toy-smoke", [f"task={{name: gpqa, source: {DATA}/ttrl/GPQA-TTT.json, limit: 150, "
                                       f"labeled: gpqa, labeled_source: {DATA}/ttrl/GPQA-TTT.json, labeled_size: 48}}"])
    task = load_task_data(config.task)
    assert len(task.test) == 150 and len(task.labeled) == 48
    assert not {q.prompt for q in task.test} & {q.prompt for q in task.labeled}
    assert task.answer_key.is_correct(task.test[0].id, f"\\boxed{{{task.answer_key.answer(task.test[0].id)}}}")
    too_many = load_config("toy-smoke", [f"task={{name: gpqa, source: {DATA}/ttrl/GPQA-TTT.json, limit: 150, "
                                         f"labeled: gpqa, labeled_source: {DATA}/ttrl/GPQA-TTT.json, labeled_size: 49}}"])
    with pytest.raises(ValueError, match="fewer than task.labeled_size=49"):
        load_task_data(too_many.task)


@needs_data
def test_tempo_run_on_gsm8k_files_grades_with_the_task(tmp_path):
    """Two TEMPO steps on six GSM8K questions with a GSM8K-train labeled pool: every logged
    eval sample's verdict is the task's own verdict on its response."""
    config = load_config("toy-smoke", ["method=tempo", *GSM8K_RUN])
    logger = MemoryLogger()
    result = run_ttt(config, logger, out_dir=tmp_path, progress=False)
    assert logger.tags["task"] == "gsm8k" and sorted(result.evals) == [0, 2]
    assert [s for s, _ in logger.metrics["critic/estep"]] == [1, 2]
    task, gold = get_task("gsm8k"), load_task_data(config.task).answer_key
    rows = [json.loads(line) for line in logger.artifacts["rollouts/eval_step_00002.jsonl"].splitlines()]
    assert len(rows) == 6 * 2 + 6
    for row in rows:
        assert row["correct"] == task.is_correct(row["response"], gold.answer(row["question_id"]))
        assert row["prompt"].endswith("within \\boxed{}.")


def test_chat_template_wraps_every_prompt(tmp_path):
    """A tokenizer with a chat template: the model sees the rendered prompt in rollouts and
    evaluation; chat_template=false turns it off."""
    from tempo_bench.policy.model import load_tokenizer, resolve_model_path

    model_dir = tmp_path / "toy_with_template"
    import shutil

    shutil.copytree(resolve_model_path("toy"), model_dir)
    tokenizer = load_tokenizer("toy")
    tokenizer.chat_template = ("{% for m in messages %}Q:{{ m['content'][2:] }}{% endfor %}"
                               "{% if add_generation_prompt %}={% endif %}")
    tokenizer.save_pretrained(model_dir)
    base = ["train.steps=1", "eval.every=1", "eval.k=1", "eval.size=4", "rollout.n=2", "train.prompts_per_step=2"]
    prompts = {}
    for flag in (True, False):
        logger = MemoryLogger()
        run_ttt(load_config("toy-smoke", [f"model.path={model_dir}", f"model.chat_template={flag}", *base]),
                logger, out_dir=tmp_path / str(flag), progress=False)
        rows = [json.loads(x) for x in logger.artifacts["rollouts/eval_step_00001.jsonl"].splitlines()]
        prompts[flag] = [r["prompt"] for r in rows]
    assert all(p.endswith("\n=") and p.startswith("Q:") for p in prompts[True])
    assert [p + "=" for p in prompts[False]] == prompts[True]


@needs_data
def test_grading_pool_agrees_with_in_process_grading():
    task = get_task("math500")
    questions = task.load(DATA / "ttrl" / "MATH-TTT.json", limit=40)
    groups = [[f"so \\boxed{{{q.answer}}}", "the answer is 7", "no answer", f"\\boxed{{{q.answer}}} again"]
              for q in questions]
    golds = [q.answer for q in questions]
    pool = GradingPool(task, workers=2, timeout_s=60)
    try:
        answers, clusters = pool.grade_groups(groups)
        assert (answers, clusters) == task.grade_groups(groups)
        assert pool.check(golds, answers) == task.check(golds, answers)
        assert all(row[0] and row[3] and not row[2] for row in pool.check(golds, answers))
    finally:
        pool.close()


def test_grading_pool_gives_up_on_a_stuck_item_and_goes_on():
    pool = GradingPool(grader_by_name("generic"), workers=1, timeout_s=1.0)
    try:
        start = time.perf_counter()
        results = pool._map(sleep_then_echo, [(0.0,), (30.0,), (0.1,)], fallback=lambda item: "gave up")
        assert results == [("generic", 0.0), "gave up", ("generic", 0.1)]
        assert pool.timeouts == 1 and time.perf_counter() - start < 20
    finally:
        pool.close()


def test_grader_by_name_rejects_unknown_tasks():
    with pytest.raises(ValueError, match="unknown task 'aime2'"):
        grader_by_name("aime2")
