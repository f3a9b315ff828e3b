"""Whole-loop tests on the shipped toy model: a short run trains the LoRA adapter, logs every
metric at every step, is reproducible, and obeys the leakage rule."""

import atexit
import shutil
import tempfile

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tempo_bench.config import load_config
from tempo_bench.core.loggers import MemoryLogger
from tempo_bench.methods.catalog import method_names, uses_test_labels
from tempo_bench.run.caches import RunCaches
from tempo_bench.run.run import run_ttt
from tempo_bench.tasks import TaskData, load_task_data

# the runs of this module share what does not depend on the method (as compare's do)
CACHES = RunCaches()

STEP_KEYS = [
    "reward/mean", "reward/pointbiserial", "reward/auroc", "reward/auroc_within", "reward/accuracy",
    "ttt/label_accuracy", "ttt/majority_ratio", "div/distinct_answers", "div/answer_entropy",
    "div/distinct_2", "policy/entropy", "policy/loss", "tokens/rollout", "tokens/policy",
    "time/rollout", "time/grade", "time/reward", "time/advantage", "time/policy",
]
OUT = tempfile.mkdtemp(prefix="tempo-e2e-")  # starting-critic cache of this module
atexit.register(shutil.rmtree, OUT, ignore_errors=True)
EVAL_KEYS = ["eval/mean_at_k", "eval/maj_at_k", "eval/pass_at_k", "eval/greedy_acc",
             "eval/pass_at_1", "eval/distinct_answers"]


def two_step_config(**extra):
    overrides = ["train.steps=2", "train.prompts_per_step=4", "rollout.n=4", "eval.size=4",
                 "eval.k=2", "eval.every=1", "threads=1", "train.lr=0.01", f"out={OUT}"]
    return load_config("toy-smoke", overrides + [f"{k}={v}" for k, v in extra.items()])


def lora_tensors(result):
    return load_file(str(result.out_dir / "adapter" / "adapter_model.safetensors"))


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    logger = MemoryLogger()
    result = run_ttt(two_step_config(), logger, out_dir=tmp_path_factory.mktemp("run"), progress=False, caches=CACHES)
    return result, logger


def test_two_steps_train_lora_and_log_every_metric(first_run):
    result, logger = first_run
    tensors = lora_tensors(result)
    lora_b = [t for name, t in tensors.items() if "lora_B" in name]
    assert lora_b, "adapter has no LoRA B matrices"
    # peft initialises B to zero: any non-zero entry is a trained change
    assert any(t.abs().max() > 0 for t in lora_b)
    for key in STEP_KEYS:
        assert [s for s, _ in logger.metrics[key]] == [1, 2], key
    for key in EVAL_KEYS:
        assert [s for s, _ in logger.metrics[key]] == [0, 1, 2], key
    assert logger.tags["method"] == "standard_ttt" and logger.params["train.steps"] == 2
    # the list a sweep checks its objective against is what an evaluation logs
    from tempo_bench.run.evaluation import eval_metric_names

    logged_at_0 = {key for key, values in logger.metrics.items() if key.startswith("eval/") and values[0][0] == 0}
    assert logged_at_0 == eval_metric_names(two_step_config().eval)
    assert "rollouts/eval_step_00002.jsonl" in logger.artifacts
    # the per-question table: mean@k of each test question at the first and the last evaluation
    import csv
    import io

    table = list(csv.DictReader(io.StringIO(logger.artifacts["per_question.csv"])))
    assert len(table) == 4 and set(table[0]) == {"question_id", "accuracy_step_0", "accuracy_step_2", "change", "flip"}
    for step in (0, 2):
        mean = sum(float(row[f"accuracy_step_{step}"]) for row in table) / len(table)
        assert mean == pytest.approx(dict(logger.metrics["eval/mean_at_k"])[step])
    assert logger.history("tokens/rollout")[1] > logger.history("tokens/rollout")[0] > 0


def test_same_seed_same_run(first_run, tmp_path):
    result, logger = first_run
    again_logger = MemoryLogger()
    again = run_ttt(two_step_config(), again_logger, out_dir=tmp_path, progress=False, caches=CACHES)
    a, b = lora_tensors(result), lora_tensors(again)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert logger.history("policy/loss") == again_logger.history("policy/loss")


def test_static_decoding_runs_the_loop_as_the_eager_loop_does(tmp_path):
    """rollout.decode=static in a whole run with per-question seeds: the training rollouts are the
    eager loop's, so every training value logged matches the eager run's, as does the trained
    adapter (to float rounding: log-probabilities from kernels of other shapes). Evaluation draws
    from the global generator, which the static loop reads in another order (static_decode's
    docstring): its samples differ, its metrics are logged all the same."""
    loggers, adapters = {}, {}
    for decode in ("eager", "static"):
        loggers[decode] = MemoryLogger()
        result = run_ttt(two_step_config(**{"rollout.decode": decode, "rollout.seeding": "question"}),
                         loggers[decode], out_dir=tmp_path / decode, progress=False, caches=CACHES)
        adapters[decode] = lora_tensors(result)
    eager, static = loggers["eager"].metrics, loggers["static"].metrics
    assert set(static) == set(eager) and {"reward/mean", "policy/loss", "eval/mean_at_k"} <= set(eager)
    for key in eager:
        assert [s for s, _ in static[key]] == [s for s, _ in eager[key]], key
        if not key.startswith(("time/", "eval/", "tokens/eval")):
            assert [v for _, v in static[key]] == pytest.approx([v for _, v in eager[key]], rel=1e-4, abs=1e-5,
                                                                nan_ok=True), key
    assert all(torch.allclose(adapters["static"][k], adapters["eager"][k], atol=1e-5) for k in adapters["eager"])


# every registered method: one that joins the registry is covered without editing this test
NON_ORACLE = [m for m in method_names() if not uses_test_labels(m)]
ORACLES = [m for m in method_names() if uses_test_labels(m)]


@pytest.mark.parametrize("method", NON_ORACLE)
def test_leakage_rule_hidden_answers_change_no_update(method, tmp_path):
    """Shuffling the hidden test answers changes the metrics but no reward, advantage (hence
    loss), critic update or parameter of any non-oracle method."""
    config = two_step_config(method=method)
    task = load_task_data(config.task)
    shuffled = TaskData(task.name, task.test, task.answer_key.shuffled(seed=1), task.labeled)
    runs = []
    for i, data in enumerate((task, shuffled)):
        logger = MemoryLogger()
        runs.append((run_ttt(config, logger, task=data, out_dir=tmp_path / str(i), progress=False, caches=CACHES), logger))
    (a, log_a), (b, log_b) = runs
    ta, tb = lora_tensors(a), lora_tensors(b)
    assert all(torch.equal(ta[k], tb[k]) for k in ta)
    for key in ("reward/mean", "policy/loss", "policy/grad_norm", "critic/value_loss"):
        if key in log_a.metrics:
            assert log_a.history(key) == log_b.history(key), key
    if (a.out_dir / "critic").is_dir():
        ca = load_file(str(a.out_dir / "critic" / "model.safetensors"))
        cb = load_file(str(b.out_dir / "critic" / "model.safetensors"))
        assert all(torch.equal(ca[k], cb[k]) for k in ca)
    # the shuffle did reach the metrics: the truth-based numbers moved
    truth_based = ["eval/mean_at_k", "eval/greedy_acc", "eval/pass_at_k"]
    assert any(not np.allclose(log_a.history(k), log_b.history(k)) for k in truth_based)


@pytest.mark.parametrize("method", ORACLES)
def test_oracle_sees_the_answers_and_is_flagged(method, tmp_path):
    config = two_step_config(method=method)
    task = load_task_data(config.task)
    shuffled = TaskData(task.name, task.test, task.answer_key.shuffled(seed=1), task.labeled)
    logs = []
    for i, data in enumerate((task, shuffled)):
        logger = MemoryLogger()
        run_ttt(config, logger, task=data, out_dir=tmp_path / str(i), progress=False, caches=CACHES)
        logs.append(logger)
    assert logs[0].history("reward/mean") != logs[1].history("reward/mean")
    assert logs[0].tags["uses_test_labels"] == "true" and "oracle" in logs[0].tags


def test_tempo_recalibrates_every_k_steps_in_the_loop(tmp_path):
    config = two_step_config(method="tempo", **{"methods.tempo.recal_interval": 2, "train.steps": 4,
                                                "eval.every": 4})
    logger = MemoryLogger()
    run_ttt(config, logger, out_dir=tmp_path, progress=False, caches=CACHES)
    assert logger.history("critic/estep_count") == [0, 1, 1, 2]
    assert [s for s, _ in logger.metrics["critic/value_loss"]] == [2, 4]
    assert {"critic/reliability_step_00002.json", "critic/reliability_step_00004.json"} <= set(logger.artifacts)
    for key in ("critic/probe/ece", "critic/test/ece", "critic/gap/ece", "critic/test/auroc_within"):
        assert len(logger.metrics[key]) == 4, key
    assert logger.history("train/labeled_groups")[0] > 0


def test_token_budget_stops_the_run_and_evaluates_there(tmp_path):
    logger = MemoryLogger()
    result = run_ttt(two_step_config(**{"train.steps": 5, "train.budget_tokens": 1, "eval.every": 10}),
                     logger, out_dir=tmp_path, progress=False, caches=CACHES)
    assert sorted(result.steps) == [1]  # the first step already spent more than 1 token
    assert sorted(result.evals) == [0, 1]
    assert (tmp_path / "adapter" / "adapter_model.safetensors").is_file()


def test_non_finite_reward_stops_with_step_and_phase_after_a_checkpoint(tmp_path, monkeypatch):
    from tempo_bench.baselines.standard_ttt import StandardTTT

    honest = StandardTTT.rewards

    def poisoned(self, batch):
        out = honest(self, batch)
        if self.calls == 2:
            out.rewards[0, 0] = float("nan")
        self.calls += 1
        return out

    monkeypatch.setattr(StandardTTT, "calls", 0, raising=False)
    monkeypatch.setattr(StandardTTT, "rewards", poisoned)
    with pytest.raises(FloatingPointError, match=r"step 3, phase 'reward'.*checkpoint of step 2 saved"):
        run_ttt(two_step_config(**{"train.steps": 4}), MemoryLogger(), out_dir=tmp_path, progress=False, caches=CACHES)
    from tempo_bench.run.checkpoint import latest_checkpoint, load_state

    assert load_state(latest_checkpoint(tmp_path))["step"] == 2
