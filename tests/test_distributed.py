"""Data-parallel runs (torchrun, gloo on CPU): a 2-rank run, killed in one rank and resumed, logs
what a 1-rank run of the same global batch logs, and bad launches stop every rank with an error
instead of hanging."""

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
# after a resume the sampling copy's LoRA merge is computed afresh (tests/test_resume.py): the last
# bits of the rollouts' log-probabilities move these two
RESUMED_NOISE = {"policy/loss": (1e-5, 1e-6), "policy/grad_norm": (1e-4, 1e-6)}
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "PASSIVE"}


def torchrun(*args: str, ranks: int = 2) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={ranks}",
            "--module", "tempo_bench.commands.cli", *args]


def histories(out):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    (run,) = client.search_runs([client.get_experiment_by_name("tempo-bench").experiment_id])
    return run, {k: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, k)] for k in run.data.metrics}


def children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` (torchrun's ranks), from /proc."""
    from pathlib import Path

    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # the process ended meanwhile
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return sorted(found)


def kill_one_rank_after_a_checkpoint(proc: subprocess.Popen, out) -> None:
    """SIGKILL one rank's process (not the launcher) once a checkpoint of step 1 exists."""
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        folders = list((out / "tempo-bench").glob("tempo-s0-*"))
        path = latest_checkpoint(folders[0]) if folders else None
        if path is not None and load_state(path)["step"] >= 1:
            os.kill(children(proc.pid)[-1], signal.SIGKILL)
            return
        time.sleep(0.05)
    pytest.fail(f"no checkpoint to kill after (launcher exit {proc.poll()})")


@pytest.mark.slow
def test_two_ranks_killed_and_resumed_log_what_one_rank_logs(tmp_path, created_store):
    """One 1-rank run against a 2-rank run of the same global batch, with 2 minibatches per step
    (each rank takes part of each), whose rank is killed with SIGKILL after a checkpoint: torchrun
    stops the other rank within 60 s, the checkpoint survives, and --resume on 2 ranks finishes the
    run with every step logged once and every metric equal to the 1-rank run's."""
    one, two = tmp_path / "one", tmp_path / "two"
    created_store(one), created_store(two)
    args = [*ARGS, "--set", "train.steps=3", "--set", "train.minibatches=2"]
    subprocess.run([sys.executable, "-m", "tempo_bench.commands.cli", *args, "--out", str(one)],
                   check=True, env=ENV, capture_output=True)
    proc = subprocess.Popen(torchrun(*args, "--out", str(two)), env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        kill_one_rank_after_a_checkpoint(proc, two)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode not in (0, None), "the launcher did not fail when a rank died"
    (folder,) = (two / "tempo-bench").glob("tempo-s0-*")
    assert load_state(latest_checkpoint(folder))["step"] < 3
    done = subprocess.run(torchrun(*args, "--out", str(two), "--resume"), env=ENV, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "on 2 ranks" in done.stdout and done.stdout.count("Evaluation on the test questions") == 1  # rank 0 reports
    (_, single), (run, double) = histories(one), histories(two)
    assert set(single) == set(double) and run.info.status == "FINISHED"
    compared = [k for k in single if not k.startswith("time/")]
    assert {"reward/mean", "policy/loss", "critic/value_loss", "eval/mean_at_k", "tokens/rollout"} <= set(compared)
    assert [s for s, _ in double["reward/mean"]] == [1, 2, 3] and [s for s, _ in double["eval/mean_at_k"]] == [0, 1, 2, 3]
    for key in compared:
        assert [s for s, _ in double[key]] == [s for s, _ in single[key]], key  # logged once per step
        rel, abs_ = RESUMED_NOISE.get(key, (REL, ABS))
        for (step, a), (_, b) in zip(single[key], double[key]):
            assert b == pytest.approx(a, rel=rel, abs=abs_, nan_ok=True), (key, step)


def test_a_world_size_that_does_not_split_the_step_stops_every_rank(tmp_path):
    start = time.time()
    done = subprocess.run(torchrun(*ARGS, "--set", "train.prompts_per_step=3", "--out", str(tmp_path)),
                          env=ENV, capture_output=True, text=True, timeout=240)
    assert done.returncode != 0 and time.time() - start < 120
    # both ranks name the problem (3 unlabeled + 2 labeled questions per step over 2 ranks)
    assert done.stderr.count("error: 5 questions per step do not split over 2 ranks") == 2, done.stderr[-2000:]


class FakeRanks(Ranks):
    """Rank 0 of ``world`` ranks whose other members were launched with ``other``."""

    def __init__(self, other, world: int = 2):
        super().__init__(0, world)
        object.__setattr__(self, "other", other)

    def gather(self, value):
        return [value] + [self.other] * (self.world - 1)


def test_ranks_with_different_configs_or_an_engine_size_that_does_not_divide_them_are_errors():
    from tempo_bench.config import flatten

    config = load_config("toy-smoke", ["rollout.seeding=question"])
    check_same_config(FakeRanks(flatten(config.model_dump())), config)  # the same: fine
    other = flatten(load_config("toy-smoke", ["rollout.seeding=question", "train.lr=1e-3"]).model_dump())
    with pytest.raises(ConfigError, match="different configs.*train.lr"):
        check_same_config(FakeRanks(other), config)
    plain = load_config("toy-smoke")
    with pytest.raises(ConfigError, match="rollout.seeding=question"):
        check_same_config(FakeRanks(flatten(plain.model_dump())), plain)
    served = load_config("toy-smoke", ["rollout.seeding=question", "rollout.backend=vllm"])
    check_same_config(FakeRanks(flatten(served.model_dump())), served)  # an engine per rank
    spanning = load_config("toy-smoke", ["rollout.seeding=question", "rollout.backend=vllm",
                                         "rollout.vllm.tensor_parallel_size=2"])
    check_same_config(FakeRanks(flatten(spanning.model_dump())), spanning)  # one engine over both ranks
    split = load_config("toy-smoke", ["rollout.seeding=question", "rollout.backend=vllm",
                                      "rollout.vllm.tensor_parallel_size=4"])
    with pytest.raises(ConfigError, match="tensor_parallel_size=4 does not divide the 2 ranks"):
        check_same_config(FakeRanks(flatten(split.model_dump())), split)


def test_a_ranks_share_and_its_engine_groups_share():
    """Each rank's contiguous share of a step's questions; an engine spanning k ranks samples the
    union of its ranks' shares (the rank's own share lies within it)."""
    from tempo_bench.run.distributed import Ranks

    assert [Ranks(r, 4).share(8) for r in range(4)] == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    assert [Ranks(r, 4).share(8, group=2) for r in range(4)] == [range(0, 4), range(0, 4), range(4, 8), range(4, 8)]
    assert Ranks(3, 4).share(8, group=4) == range(0, 8)
