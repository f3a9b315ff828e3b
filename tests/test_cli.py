"""The command line: a toy-smoke run logged to a local MLflow sqlite store, and clear errors."""

import pytest

from tempo_bench.commands.cli import main
from tempo_bench.config import preset_names

STEPS = 2


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli")
    code = main(["run", "--preset", "toy-smoke", "--out", str(out), "--quiet",
                 "--set", f"train.steps={STEPS}", "--set", "eval.size=4", "--set", "threads=1"])
    return code, out


def test_run_logs_every_metric_at_every_step_to_sqlite(smoke_run, capsys):
    code, out = smoke_run
    assert code == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("tempo-bench")
    (run,) = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED" and run.info.run_name == "standard_ttt-s0"
    assert run.data.tags["method"] == "standard_ttt" and run.data.tags["task"] == "toy_addition"
    assert run.data.params["train.steps"] == str(STEPS)
    for key in ("reward/pointbiserial", "ttt/label_accuracy", "div/distinct_answers", "time/rollout"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, STEPS + 1))
    for key in ("eval/mean_at_k", "eval/maj_at_k", "eval/pass_at_k", "eval/greedy_acc"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(STEPS + 1))
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.json", "rollouts", "adapter"} <= artifacts
    adapter = {a.path for a in client.list_artifacts(run.info.run_id, "adapter")}
    assert {"adapter/adapter_config.json", "adapter/adapter_model.safetensors"} <= adapter


def test_bad_inputs_fail_before_work_with_named_problem(capsys, tmp_path):
    assert main(["run", "--preset", "nope", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'nope'" in capsys.readouterr().err
    assert main(["run", "--preset", "toy-smoke", "--method", "tempoo", "--out", str(tmp_path)]) == 2
    assert "unknown method 'tempoo'" in capsys.readouterr().err
    assert main(["run", "--preset", "toy-smoke", "--set", "model.path=/no/such/model", "--out", str(tmp_path)]) == 2
    assert "could not load model '/no/such/model': no such local folder" in capsys.readouterr().err
    assert main(["run", "--preset", "toy-smoke", "--method", "tempo", "--set", "critic.init=/no/critic",
                 "--out", str(tmp_path)]) == 2
    assert "critic.init='/no/critic': no saved critic in /no/critic" in capsys.readouterr().err
    assert not (tmp_path / "mlflow.db").exists(), "a bad config must not create a run"


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "run" in text and "toy-model" in text
    assert "toy-smoke" in preset_names()


def test_compare_runs_methods_into_one_experiment_and_prints_table(tmp_path, capsys, created_store):
    created_store(tmp_path)
    table = tmp_path / "table.md"
    code = main(["compare", "--preset", "toy-smoke", "--methods", "standard_ttt,tempo", "--seeds", "0",
                 "--out", str(tmp_path), "--table", str(table),
                 "--set", "train.steps=2", "--set", "eval.size=4", "--set", "threads=1"])
    assert code == 0
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    exp = client.get_experiment_by_name("compare-toy-smoke")
    names = sorted(r.info.run_name for r in client.search_runs([exp.experiment_id]))
    assert names == ["standard_ttt-s0", "tempo-s0"]
    text = table.read_text()
    assert text.startswith("| method | seeds | mean@k") and "| tempo | 1 |" in text
    assert "Final metrics, mean [95% bootstrap CI]" in capsys.readouterr().out


def test_parallel_compare_equals_the_sequential_one(tmp_path, created_store):
    """Runs in spawned worker processes log the same numbers as the same runs one after another
    (each run's randomness is its own seed's; both with one torch thread per run)."""
    from tempo_bench.experiments.compare import run_compare

    common = ["train.steps=2", "eval.size=4", "threads=1"]
    runs = {}
    for workers in (1, 2):
        created_store(tmp_path / f"w{workers}")
        outcomes, _ = run_compare("toy-smoke", ["standard_ttt"], [0, 1], common, None,
                                  str(tmp_path / f"w{workers}"), None, workers=workers)
        assert all(o.error is None for o in outcomes)
        runs[workers] = {(o.method, o.seed): o.values for o in outcomes}
    import pytest

    for key, values in runs[1].items():  # NaN-aware (a method without a critic has no critic gap)
        assert runs[2][key] == pytest.approx(values, nan_ok=True, rel=0, abs=0)
    assert runs[1][("standard_ttt", 0)]["reward/pointbiserial@start"] != runs[1][("standard_ttt", 1)][
        "reward/pointbiserial@start"]


def test_compare_rejects_unknown_methods_and_bad_seeds(tmp_path, capsys):
    assert main(["compare", "--preset", "toy-smoke", "--methods", "tempo,nope", "--out", str(tmp_path)]) == 2
    assert "unknown methods ['nope']" in capsys.readouterr().err
    assert main(["compare", "--preset", "toy-smoke", "--seeds", "a,b", "--out", str(tmp_path)]) == 2
    assert "--seeds takes comma-separated integers" in capsys.readouterr().err
    assert main(["compare", "--preset", "toy-smoke", "--workers", "0", "--out", str(tmp_path)]) == 2
    assert "--workers takes 'auto' or a whole number >= 1, got '0'" in capsys.readouterr().err


def test_dry_run_prints_the_resolved_config_and_loads_nothing(tmp_path, capsys):
    code = main(["run", "--preset", "toy-smoke", "--method", "tempo", "--dry-run", "--out", str(tmp_path),
                 "--set", "model.path=Qwen/Qwen3-8B"])  # no hub here: a dry run must not try it
    assert code == 0
    out = capsys.readouterr().out
    assert "# resolved config" in out and "method: tempo" in out
    assert "policy:   Qwen/Qwen3-8B (hub id; not cached here" in out and "critic:   a value head on a copy of the policy model" in out
    assert not any(tmp_path.iterdir())


def test_dry_run_of_a_paper_preset_without_gpu_or_network(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # any hub access would fail loudly
    assert main(["run", "--preset", "qwen3-8b-aime24", "--dry-run", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "path: Qwen/Qwen3-8B" in out and "loss: gspo" in out  # the resolved config
    assert "bfloat16 on cuda" in out and "LoRA r=64, gradient checkpointing" in out
    assert "aime24 (AIME 2024, 30 problems) from hub HuggingFaceH4/aime_2024" in out
    assert "4096 questions drawn from dapo17k (hub BytedTsinghua-SIA/DAPO-Math-17k" in out
    assert "vllm (weights synced as lora" in out and "critic:   a LoRA adapter and value head on the policy's own base weights" in out
    assert not any(tmp_path.iterdir())


def test_compare_workers_default_to_one_run_per_core_on_cpu(monkeypatch):
    import os

    import torch

    from tempo_bench.commands.compare import _compare_workers

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    assert _compare_workers("auto", "auto", runs=21) == 2
    assert _compare_workers("auto", "auto", runs=1) == 1  # never more workers than runs
    assert _compare_workers("3", "auto", runs=21) == 3
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert _compare_workers("auto", "auto", runs=21) == 1  # one run at a time on a GPU
