"""One error path for bad input: every expected failure is one `error:` line naming the file and
line, the URL or the folder, exit code 2, quickly, and before any MLflow run is created."""

import json
import time
from pathlib import Path

import pytest
import yaml

from tempo_bench.commands.cli import main

QUICK = ["--set", "train.steps=1", "--set", "eval.size=2", "--quiet"]


def error_of(capsys, argv, within_s: float = 30.0) -> str:
    start = time.monotonic()
    assert main(argv) == 2
    assert time.monotonic() - start < within_s, "an expected failure took too long to report"
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


def no_runs(out) -> bool:
    db = out / "mlflow.db"
    if not db.exists():
        return True
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return not any(client.search_runs([e.experiment_id]) for e in client.search_experiments())


def test_preset_with_a_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    preset = tmp_path / "broken.yaml"
    preset.write_text("method: tempo\ntrain: {steps: 2\neval: {k: 4}\n")
    err = error_of(capsys, ["run", "--preset", str(preset), "--out", str(tmp_path)])
    assert f"{preset}:3:" in err and "not valid YAML" in err
    assert no_runs(tmp_path)


@pytest.mark.parametrize("name,content,expected", [
    ("missing.jsonl", None, "missing.jsonl does not exist"),
    ("empty.jsonl", "", "empty.jsonl: no rows"),
    ("fields.jsonl", '\n{"text": "1+1?", "label": "2"}\n', "fields.jsonl:2: no question field"),
    ("noanswer.json", '[{"question": "1+1?", "answer": "2"},\n {"question": "2+2?"}]',
     "noanswer.json item 2: no parseable gold answer"),
    ("lines.jsonl", '{"question": "1+1?", "answer": "2"}\n{"question": "2+2?", "answer": 4\n',
     "lines.jsonl:2: not valid JSON"),
    ("list.json", '[{"question": "1+1?", "answer": "2"},\n {"question": oops}]', "list.json:2: not valid JSON"),
    ("scalars.jsonl", '{"question": "1+1?", "answer": "2"}\n\n"just a string"\n', "scalars.jsonl:3: expected an object"),
])
def test_bad_task_files_are_named_with_their_line_before_any_run(tmp_path, capsys, name, content, expected):
    source = tmp_path / name
    if content is not None:
        source.write_text(content)
    out = tmp_path / "out"
    err = error_of(capsys, ["run", "--preset", "toy-smoke", "--method", "standard_ttt", *QUICK, "--out", str(out),
                            "--set", f"task={{name: gsm8k, source: {source}, labeled_size: 0}}"])
    assert expected in err
    assert no_runs(out)


def test_unwritable_output_folder_fails_at_once(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = error_of(capsys, ["run", "--preset", "toy-smoke", *QUICK, "--out", str(blocker / "runs")], within_s=10)
    assert f"cannot write to the output folder {blocker / 'runs'}" in err
    err = error_of(capsys, ["run", "--preset", "toy-smoke", *QUICK, "--out", str(tmp_path),
                            "--tracking-uri", f"sqlite:///{blocker}/mlflow.db"], within_s=10)
    assert "folder of the MLflow store" in err


def test_sweep_storage_errors_name_the_url(tmp_path, capsys):
    from pathlib import Path

    spec = Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml"
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    err = error_of(capsys, ["sweep", str(spec), "--out", str(tmp_path), "--storage", "postgresql://tempo:secret@127.0.0.1:9/none"])
    assert "Optuna storage at postgresql://tempo:***@127.0.0.1:9/none cannot be reached" in err
    err = error_of(capsys, ["sweep", str(spec), "--out", str(tmp_path), "--storage", f"sqlite:///{blocker}/optuna.db"])
    assert "folder of the Optuna storage" in err
    err = error_of(capsys, ["sweep", str(spec), "--out", str(blocker / "runs")])
    assert "cannot write to the output folder" in err


def test_sweep_objective_metric_is_checked_before_the_first_trial(tmp_path, capsys):
    from pathlib import Path

    data = yaml.safe_load((Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml").read_text())
    data["objective"]["metric"] = "eval/mean_at_8"
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    err = error_of(capsys, ["sweep", str(spec), "--out", str(tmp_path)], within_s=20)
    assert "objective.metric 'eval/mean_at_8' is not an evaluation metric" in err and "eval/mean_at_k" in err
    assert not (tmp_path / "sweeps").exists()
    spec.write_text("preset: toy-smoke\nspace: [oops\n")
    assert f"{spec}:" in error_of(capsys, ["sweep", str(spec), "--out", str(tmp_path)])


def test_a_grid_larger_than_its_points_is_a_config_error(tmp_path, capsys):
    from pathlib import Path

    data = yaml.safe_load((Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml").read_text())
    data["n_trials"] = 5
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    assert "n_trials=5 but the grid holds 2 distinct points" in error_of(capsys, ["sweep", str(spec), "--out", str(tmp_path)])


def test_config_identity_ignores_output_settings_and_number_spelling():
    from tempo_bench.config import RunConfig, config_identity, load_config

    config = load_config("toy-smoke", [])
    same = [load_config("toy-smoke", ["out=elsewhere", "threads=2", "log.experiment=x"]),
            RunConfig.model_validate(config.model_dump()), load_config("toy-smoke", ["lora.alpha=16.0"]),
            # implementation switches that compute the same numbers (to float rounding): runs logged
            # before they existed keep their identity
            load_config("toy-smoke", ["lora.fused=false", "rollout.fused_decode=false"])]
    assert {config_identity(c) for c in same} == {config_identity(config)}
    assert config_identity(load_config("toy-smoke", ["train.lr=1e-3"])) != config_identity(config)


def test_a_sweep_whose_trials_fail_exits_nonzero_and_says_why(tmp_path, capsys, created_store):
    """Both grid points diverge (lr 1e30: a NaN policy loss at step 2): the sweep ends with 0 of 2
    trials complete, exit code 1, and names each point's error."""
    from pathlib import Path

    data = yaml.safe_load((Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml").read_text())
    data["overrides"] = ["method=standard_ttt", "train.steps=2", "eval.every=2", "eval.size=2"]
    data["space"] = {"train.lr": {"type": "categorical", "choices": [1.0e30, 2.0e30]}}
    spec = tmp_path / "spec.yaml"
    spec.write_text(yaml.safe_dump(data))
    created_store(tmp_path)
    assert main(["sweep", str(spec), "--out", str(tmp_path), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "the sweep is incomplete" in err and err.count("failed: FloatingPointError") == 2
    data["overrides"].append("model.path=/nonexistent/model")
    spec.write_text(yaml.safe_dump(data))
    assert "could not load model '/nonexistent/model'" in error_of(capsys, ["sweep", str(spec), "--out", str(tmp_path / "b")])
    assert not (tmp_path / "b" / "sweeps").exists()


def test_termination_swallowed_by_a_finaliser_still_stops_the_run():
    """CI once saw a worker's SIGTERM land in SQLAlchemy's weakref cleanup: Python printed the
    KeyboardInterrupt as "Exception ignored" and the run went on. It is delivered again."""
    import subprocess
    import sys

    code = (
        "import os, signal\n"
        "from tempo_bench.core import processes\n"
        "processes.init_worker()\n"
        "class Finaliser:\n"
        "    def __del__(self):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        for _ in range(1000): pass  # the handler runs here, inside the finaliser\n"
        "with processes.interruptible_run():\n"
        "    try:\n"
        "        Finaliser()\n"
        "        for _ in range(10**7): pass\n"
        "        print('not interrupted')\n"
        "    except KeyboardInterrupt:\n"
        "        print('interrupted')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip() == "interrupted", proc.stdout + proc.stderr
    assert "Exception ignored" not in proc.stderr, proc.stderr


def test_counts_that_would_be_miscounted_are_errors_before_any_work(tmp_path, capsys):
    """`eval --limit -1` scored 63 of 64 questions, `sweep --n-trials 0` ran the spec's count,
    `eval.size=1000` on 32 questions logged 1000 and evaluated 32, `eval --k 0` was a traceback."""
    adapter = str(tmp_path / "no-adapter")
    assert "--limit must be >= 1, got -1" in error_of(capsys, ["eval", "--adapter", adapter, "--task", "toy", "--limit", "-1"])
    assert "--k must be >= 1, got 0" in error_of(capsys, ["eval", "--adapter", adapter, "--task", "toy", "--k", "0"])
    for n in ("0", "-1"):
        assert f"--n-trials must be >= 1, got {n}" in error_of(
            capsys, ["sweep", str(Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml"), "--n-trials", n,
                     "--out", str(tmp_path)])
    err = error_of(capsys, ["run", "--preset", "toy-smoke", "--set", "eval.size=1000", "--out", str(tmp_path / "o")])
    assert "eval.size=1000 but the task has 32 test questions" in err and not (tmp_path / "o").exists()


@pytest.mark.parametrize("seeds,expected", [
    (["--set", "seed=-1"], "greater than or equal to 0 (got -1)"),
    (["--set", f"seed={2**64}"], f"less than {2**63} (got {2**64})"),  # was a torch overflow traceback
    (["--set", "critic.seed=-2"], "critic.seed: Input should be greater than or equal to 0"),
])
def test_out_of_range_seeds_are_config_errors(tmp_path, capsys, seeds, expected):
    out = tmp_path / "o"
    assert expected in error_of(capsys, ["run", "--preset", "toy-smoke", *seeds, "--out", str(out), *QUICK])
    assert not out.exists()


def test_small_input_mistakes_are_one_line_errors(tmp_path, capsys):
    """train.lr=inf passed validation and failed at step 2 without naming lr; a YAML error inside
    --set was a 7-line parser dump; `--methods ''` silently ran the defaults."""
    out = tmp_path / "o"
    err = error_of(capsys, ["run", "--preset", "toy-smoke", "--set", "train.lr=inf", "--out", str(out), *QUICK])
    assert "train.lr: Input should be a finite number" in err
    err = error_of(capsys, ["run", "--preset", "toy-smoke", "--set", "train.lr=[1", "--out", str(out), *QUICK])
    assert err.count("\n") == 1 and "override 'train.lr=[1': value is not valid YAML (expected ',' or ']'" in err
    err = error_of(capsys, ["compare", "--preset", "toy-smoke", "--methods", "", "--seeds", "0", "--out", str(out)])
    assert "--methods names no method" in err
    (tmp_path / "a-file").write_text("")
    err = error_of(capsys, ["compare", "--preset", "toy-smoke", "--methods", "oracle", "--seeds", "0", "--out", str(out),
                            "--table", str(tmp_path / "a-file" / "table.md")])
    assert "cannot write to the --table folder" in err  # was found only after all the training
    assert not out.exists()


@pytest.mark.parametrize("uri,expected", [
    ("file:///tmp/mlruns-here", "is an MLflow file store, which MLflow no longer writes by default"),
    ("mlruns", "is an MLflow file store"),
    ("foo://bar", "unknown scheme 'foo'"),  # both were MLflow tracebacks after the run was set up
])
def test_tracking_uris_mlflow_cannot_use_are_named_before_any_work(tmp_path, capsys, monkeypatch, uri, expected):
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    out = tmp_path / "o"
    assert expected in error_of(capsys, ["run", "--preset", "toy-smoke", "--tracking-uri", uri, "--out", str(out), *QUICK])


def test_figures_reads_what_exists_and_labels_unfinished_runs(tmp_path, capsys, created_store):
    """A mistyped store path made a new, empty store (then "no experiment"); with
    --include-partial a killed run's label "tempo (partial)" was looked up as a method (KeyError)."""
    from mlflow.tracking import MlflowClient

    typo = tmp_path / "typo" / "mlflow.db"
    err = error_of(capsys, ["figures", "--experiment", "x", "--tracking-uri", f"sqlite:///{typo}", "--out", str(tmp_path / "f")])
    assert f"no MLflow store at {typo}" in err and not typo.parent.exists()

    created_store(tmp_path / "store")
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    client = MlflowClient(uri)
    experiment = client.create_experiment("compare-x")
    for method, finished in (("standard_ttt", True), ("tempo", False)):  # tempo: killed, still RUNNING
        run = client.create_run(experiment, tags={"method": method, "seed": "0"}, run_name=f"{method}-s0")
        for step, value in ((0, 0.2), (5, 0.3)):
            client.log_metric(run.info.run_id, "eval/mean_at_k", value, step=step)
        if finished:
            client.set_terminated(run.info.run_id)
    assert main(["figures", "--experiment", "compare-x", "--tracking-uri", uri, "--out", str(tmp_path / "f"),
                 "--include-partial"]) == 0
    assert "| tempo (partial) | 1 | 0.300" in (tmp_path / "f" / "results.md").read_text()


def test_an_empty_search_space_is_named(tmp_path, capsys):
    """It was reported as a grid-size mismatch (n_trials=2 but the grid holds 1 point)."""
    spec = yaml.safe_load((Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml").read_text())
    spec["space"] = {}
    path = tmp_path / "empty.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert "space: Dictionary should have at least 1 item" in error_of(capsys, ["sweep", str(path), "--out", str(tmp_path)])


def test_a_question_longer_than_the_models_context_is_named_before_any_run(tmp_path, capsys):
    """A 10 MB question was accepted and memory grew past 6 GB; any prompt that cannot fit the
    model's context with the longest response is a DataError naming it (the toy's context: 192)."""
    source = tmp_path / "long.jsonl"
    rows = [{"question": "1+1?", "answer": "2"}, {"question": "1" * 400 + "+1?", "answer": "2"}]
    source.write_text("\n".join(json.dumps(r) for r in rows))
    out = tmp_path / "out"
    err = error_of(capsys, ["run", "--preset", "toy-smoke", "--method", "standard_ttt", "--set", "train.steps=1", "--set", "eval.size=2",
                            "--quiet", "--out", str(out), "--set", f"task={{name: gsm8k, source: {source}, labeled_size: 0}}"])
    assert "question 'test-1' of task 'gsm8k' is" in err and "exceeds the model's context of 192 tokens" in err
    assert no_runs(out)


def test_a_full_disk_ends_the_run_with_one_error_and_the_resume_command(tmp_path, capsys, monkeypatch):
    """A full disk (a checkpoint that cannot be written, a store that cannot record the run's
    end) was a traceback; it is one error line with the command that continues the run."""
    import errno

    from tempo_bench.core import loggers
    from tempo_bench.run import run as run_module

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "checkpoint"))

    monkeypatch.setattr(run_module, "save_checkpoint", full)
    close = loggers.MLflowLogger.close
    monkeypatch.setattr(loggers.MLflowLogger, "close", lambda self, status="FINISHED": close(self, status) if status ==
                        "FINISHED" else (_ for _ in ()).throw(RuntimeError("(sqlite3.OperationalError) database or disk is full")))
    assert main(["run", "--preset", "toy-smoke", "--set", "train.checkpoint_every=1", "--out", str(tmp_path / "o"),
                 *QUICK]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.splitlines()[-2].startswith("error: ")
    assert "no space left on the device holding" in err and "--resume" in err
    assert "warning: could not record the run's end in the store: (sqlite3.OperationalError) database or disk is full" in err
