"""Checkpoints: a run killed with SIGKILL at a random step and resumed ends exactly like an
uninterrupted run, in the same MLflow run, with every step logged once."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from tempo_bench.commands.cli import main
from tempo_bench.core.seeds import SEEDING
from tempo_bench.run.checkpoint import latest_checkpoint, load_state

STEPS = 6
ARGS = ["--preset", "toy-smoke", "--method", "tempo", "--quiet", "--set", f"train.steps={STEPS}",
        "--set", "train.checkpoint_every=1", "--set", "eval.every=2", "--set", "threads=1",
        "--set", "eval.size=4"]
# After a restore the sampling copy's LoRA merge is computed afresh, which moves the last bits of
# the rollouts' log-probabilities: policy/loss (GSPO's -mean(ratio * A), ratio ~ 1, A whitened to
# mean 0, so ~1e-8 of pure cancellation) and the gradient norm (~1e-7 relative) differ at that
# level; rewards, critic values, tokens and evaluations stay identical
NOISE_LEVEL = {"policy/loss": 1e-6, "policy/grad_norm": 1e-4}
DETERMINISTIC = ["policy/loss", "policy/grad_norm", "reward/mean", "critic/value_loss", "critic/probe/ece", "eval/mean_at_k",
                 "tokens/rollout", "tokens/critic", "critic/estep_count"]


def histories(out):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tempo-bench").experiment_id])
    keys = list(run.data.metrics)
    return run, {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in keys}


def run_dir(out):
    (folder,) = (out / "tempo-bench").glob("tempo-s0-*")
    return folder


def test_sigkill_at_a_random_step_then_resume_equals_uninterrupted(tmp_path, created_store):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    created_store(whole), created_store(broken)
    assert main(["run", *ARGS, "--out", str(whole)]) == 0
    kill_after = random.Random(os.environ.get("PYTEST_SEED", "0") + str(time.time())).randint(1, STEPS - 2)
    proc = subprocess.Popen([sys.executable, "-m", "tempo_bench.commands.cli", "run", *ARGS, "--out", str(broken)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        folders = list((broken / "tempo-bench").glob("tempo-s0-*"))
        path = latest_checkpoint(folders[0]) if folders else None
        if path is not None and load_state(path)["step"] >= kill_after:
            os.killpg(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.05)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the run was not killed mid-way (exit {proc.returncode})"
    killed_at = load_state(latest_checkpoint(run_dir(broken)))["step"]
    assert killed_at < STEPS
    assert main(["run", *ARGS, "--out", str(broken), "--resume"]) == 0

    run_a, a = histories(whole)
    run_b, b = histories(broken)
    assert run_b.info.status == "FINISHED"
    assert set(a) == set(b)
    for key in a:
        steps = [s for s, _ in b[key]]
        assert steps == sorted(set(steps)), f"{key}: duplicated steps {steps}"
        assert steps == [s for s, _ in a[key]], f"{key}: steps differ"
    for key in DETERMINISTIC:
        if key in NOISE_LEVEL:
            assert [s for s, _ in a[key]] == [s for s, _ in b[key]], key
            assert all(abs(x - y) < NOISE_LEVEL[key] for (_, x), (_, y) in zip(a[key], b[key])), key
        else:
            assert a[key] == b[key], key


def test_resume_without_a_checkpoint_starts_the_run_and_a_changed_config_is_a_clear_error(tmp_path, capsys):
    """One command line serves a job a scheduler may requeue: --resume before any checkpoint
    starts the run (and says so); after one, it continues it, and refuses a changed config."""
    short = [a if a != f"train.steps={STEPS}" else "train.steps=1" for a in ARGS]
    assert main(["run", *short, "--out", str(tmp_path), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "--resume: no checkpointed run" in out and "yet; starting it" in out
    changed = short + ["--set", "train.lr=0.5"]
    assert main(["run", *changed, "--out", str(tmp_path), "--resume"]) == 2
    assert "the config differs in train.lr" in capsys.readouterr().err


def test_a_checkpoint_made_before_a_config_field_existed_still_resumes(tmp_path):
    """A field added since (eval.collapse_tolerance) holds its default: no difference. The
    analysis-only field may change on resume; a training setting may not."""
    import json

    import pytest

    from tempo_bench.config import load_config
    from tempo_bench.core.errors import ConfigError
    from tempo_bench.run.checkpoint import check_resumable

    saved = load_config("toy-smoke").model_dump()
    del saved["eval"]["collapse_tolerance"]
    path = tmp_path / "step_000001"
    path.mkdir()
    (path / "state.json").write_text(json.dumps({"config": saved, "step": 1, "seeding": SEEDING}))
    assert check_resumable(path, load_config("toy-smoke"))["step"] == 1
    assert check_resumable(path, load_config("toy-smoke", ["eval.collapse_tolerance=0.2"]))["step"] == 1
    # a checkpoint from before the LoRA and decode switches existed resumes with either setting
    del saved["lora"]["fused"], saved["rollout"]["fused_decode"]
    (path / "state.json").write_text(json.dumps({"config": saved, "step": 1, "seeding": SEEDING}))
    assert check_resumable(path, load_config("toy-smoke", ["lora.fused=false", "rollout.fused_decode=false"]))
    with pytest.raises(ConfigError, match="train.lr"):
        check_resumable(path, load_config("toy-smoke", ["train.lr=1e-3"]))


def test_the_hint_for_a_checkpoint_from_before_share_base_existed_is_accepted(tmp_path):
    """A LoRA self-critic's checkpoint from before critic.share_base (no layout saved: its own
    base) meets a config where the setting resolves to a shared base: the error's hint,
    `--set critic.share_base=false`, was itself refused as a config change. Now it resumes."""
    import json

    from tempo_bench.config import load_config
    from tempo_bench.core.errors import ConfigError
    from tempo_bench.run.checkpoint import check_resumable

    settings = ["method=tempo", "critic.lora=true"]
    saved = load_config("toy-smoke", settings).model_dump()
    del saved["critic"]["share_base"]
    path = tmp_path / "step_000001"
    path.mkdir()
    (path / "state.json").write_text(json.dumps({"config": saved, "step": 1, "seeding": SEEDING}))
    with pytest.raises(ConfigError, match="add --set critic.share_base=false"):
        check_resumable(path, load_config("toy-smoke", settings))
    assert check_resumable(path, load_config("toy-smoke", [*settings, "critic.share_base=false"]))["step"] == 1


def test_a_checkpoint_of_another_seeding_scheme_is_refused(tmp_path):
    """Checkpoints made before 2026-12-04 (no "seeding" in state.json: the arithmetic seeds) would
    continue with other seeds: the resume says so instead of mixing two schemes in one run."""
    import json

    from tempo_bench.config import load_config
    from tempo_bench.core.errors import ConfigError
    from tempo_bench.run.checkpoint import check_resumable

    path = tmp_path / "step_000001"
    path.mkdir()
    (path / "state.json").write_text(json.dumps({"config": load_config("toy-smoke").model_dump(), "step": 1}))
    with pytest.raises(ConfigError, match=f"seeding scheme 1 and this version seeds with scheme {SEEDING}"):
        check_resumable(path, load_config("toy-smoke"))


@pytest.mark.parametrize("damaged", ["optimizer.pt", "adapter/adapter_model.safetensors", "state.json"])
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_previous_one_resumes(tmp_path, created_store, capsys,
                                                                             damaged):
    """A full disk or a kill between files can leave the newest checkpoint truncated: --resume
    warns in one line, sets it aside (kept, renamed damaged_step_N) and continues from the one
    before; every step ends up logged once."""
    created_store(tmp_path)
    short = [a if a != f"train.steps={STEPS}" else "train.steps=3" for a in ARGS]
    assert main(["run", *short, "--out", str(tmp_path)]) == 0
    folder = run_dir(tmp_path)
    newest = latest_checkpoint(folder)
    assert newest.name == "step_000003"
    target = newest / damaged
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])  # truncated
    assert latest_checkpoint(folder).name == "step_000002"
    capsys.readouterr()
    longer = [a if a != "train.steps=3" else "train.steps=4" for a in short]
    assert main(["run", *longer, "--out", str(tmp_path), "--resume"]) == 0
    err = capsys.readouterr().err
    assert f"warning: checkpoint {newest} cannot be loaded ({damaged}" in err
    assert "set aside as damaged_step_000003, resuming from step_000002" in err and "Traceback" not in err
    assert (folder / "checkpoints" / "damaged_step_000003").is_dir()
    run, history = histories(tmp_path)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in history["reward/mean"]] == [1, 2, 3, 4]


def test_a_run_folder_moved_with_its_store_resumes_and_says_where_its_artifacts_go(tmp_path, capsys):
    """`--out` may change on resume (it computes nothing): the moved run continues in the same
    MLflow run; MLflow keeps the artifact folder's absolute path, which the resume points out."""
    short = [a if a != f"train.steps={STEPS}" else "train.steps=2" for a in ARGS]
    assert main(["run", *short, "--out", str(tmp_path / "before")]) == 0
    (tmp_path / "before").rename(tmp_path / "after")
    longer = [a if a != "train.steps=2" else "train.steps=3" for a in short]
    capsys.readouterr()
    assert main(["run", *longer, "--out", str(tmp_path / "after"), "--resume"]) == 0
    out = capsys.readouterr().out
    assert "resuming" in out and "artifacts are recorded at" in out and "was the folder moved?" in out
    run, metrics = histories(tmp_path / "after")
    assert run.info.status == "FINISHED" and [s for s, _ in metrics["time/step"]] == [1, 2, 3]
