"""Data-parallel runs (torchrun, gloo on CPU): a 2-rank run logs what a 1-rank run of the same
global batch logs, a 2-rank run killed mid-way resumes, and bad launches stop every rank with an
error instead of hanging."""

import os
import signal
import subprocess
import sys
import time

import pytest

from tempo_bench.config import load_config
from tempo_bench.core.errors import ConfigError
from tempo_bench.run.checkpoint import latest_checkpoint, load_state
from tempo_bench.run.distributed import Ranks, check_same_config

ARGS = ["run", "--preset", "toy-smoke", "--method", "tempo", "--quiet", "--set", "threads=1",
        "--set", "eval.size=4", "--set", "rollout.seeding=question", "--set", "train.checkpoint_every=1"]
# measured (2 steps, this CPU): every metric identical except three that differ by float summation
# order: policy/loss (~7e-8, pure cancellation: 6.4% of nothing), grad_norm (4.5e-7 relative),
# policy entropy (9e-8 relative)
REL, ABS = 1e-5, 1e-6
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def torchrun(*args: str, ranks: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
            "--module", "tempo_bench.commands.cli", *args]


def histories(out):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tempo-bench").experiment_id])
    return run, {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}


@pytest.mark.slow
def test_two_ranks_log_what_one_rank_logs(tmp_path, created_store):
    one, two = tmp_path / "one", tmp_path / "two"
    created_store(one), created_store(two)
    steps = ["--set", "train.steps=2"]
    subprocess.run([sys.executable, "-m", "tempo_bench.commands.cli", *ARGS, *steps, "--out", str(one)],
                   check=True, env=ENV, capture_output=True)
    done = subprocess.run(torchrun(*ARGS, *steps, "--out", str(two)), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "on 2 ranks" in done.stdout and done.stdout.count("Evaluation on the test questions") == 1  # rank 0 reports
    (_, single), (run, double) = histories(one), histories(two)
    assert set(single) == set(double) and run.info.status == "FINISHED"
    compared = [k for k in single if not k.startswith("time/")]
    assert {"reward/mean", "policy/loss", "critic/value_loss", "eval/mean_at_k", "tokens/rollout"} <= set(compared)
    for key in compared:
        assert [s for s, _ in double[key]] == [s for s, _ in single[key]], key  # logged once per step
        for (step, a), (_, b) in zip(single[key], double[key]):
            assert b == pytest.approx(a, rel=REL, abs=ABS, nan_ok=True), (key, step)


@pytest.mark.slow
def test_a_rank_killed_mid_way_stops_the_other_and_the_run_resumes(tmp_path, created_store):
    """SIGKILL to one rank's process after a checkpoint: torchrun stops the other rank (within 60
    s), the last checkpoint is intact, and --resume on 2 ranks completes every step once."""
    out = tmp_path / "out"
    created_store(out)
    args = [*ARGS, "--set", "train.steps=3", "--out", str(out)]
    proc = subprocess.Popen(torchrun(*args), env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline, killed = time.time() + 300, None
    while time.time() < deadline and proc.poll() is None and killed is None:
        folders = list((out / "tempo-bench").glob("tempo-s0-*"))
        path = latest_checkpoint(folders[0]) if folders else None
        if path is not None and load_state(path)["step"] >= 1:
            ranks = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True).stdout.split()
            killed = int(ranks[-1])  # one rank's process, not the launcher
            os.kill(killed, signal.SIGKILL)
        time.sleep(0.05)
    assert killed is not None, "no checkpoint to kill after"
    try:
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode not in (0, None), "the launcher did not fail when a rank died"
    (folder,) = (out / "tempo-bench").glob("tempo-s0-*")
    assert load_state(latest_checkpoint(folder))["step"] < 3
    done = subprocess.run(torchrun(*args, "--resume"), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    run, metrics = histories(out)
    assert run.info.status == "FINISHED"
    assert [s for s, _ in metrics["reward/mean"]] == [1, 2, 3]  # every step once
    assert [s for s, _ in metrics["eval/mean_at_k"]] == [0, 1, 2, 3]


def test_a_world_size_that_does_not_split_the_step_stops_every_rank(tmp_path):
    start = time.time()
    done = subprocess.run(torchrun(*ARGS, "--set", "train.prompts_per_step=3", "--out", str(tmp_path)),
                          env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0 and time.time() - start < 120
    # both ranks name the problem (3 unlabeled + 2 labeled questions per step over 2 ranks)
    assert done.stderr.count("error: 5 questions per step do not split over 2 ranks") == 2, done.stderr[-2000:]


class FakeRanks(Ranks):
    """Two ranks whose other member was launched with ``other``."""

    def __init__(self, other):
        super().__init__(0, 2)
        object.__setattr__(self, "other", other)

    def gather(self, value):
        return [value, self.other]


def test_ranks_with_different_configs_or_an_unsplittable_backend_are_errors():
    from tempo_bench.config import flatten

    config = load_config("toy-smoke", ["rollout.seeding=question"])
    check_same_config(FakeRanks(flatten(config.model_dump())), config)  # the same: fine
    other = flatten(load_config("toy-smoke", ["rollout.seeding=question", "train.lr=1e-3"]).model_dump())
    with pytest.raises(ConfigError, match="different configs.*train.lr"):
        check_same_config(FakeRanks(other), config)
    plain = load_config("toy-smoke")
    with pytest.raises(ConfigError, match="rollout.seeding=question"):
        check_same_config(FakeRanks(flatten(plain.model_dump())), plain)
    with pytest.raises(ConfigError, match="seeding: question is built for the hf backend"):
        load_config("toy-smoke", ["rollout.seeding=question", "rollout.backend=vllm"])
