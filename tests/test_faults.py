"""Fault injection: SIGINT (a terminal's Ctrl-C, sent to the whole process group) and SIGKILL at
seeded random points of `run`, `compare` and `sweep`, then the recovery command the README gives
(the one the interrupted command printed). Nothing logged may be lost or counted twice.

The kill points are drawn from FAULT_SEED (environment variable, default 0) and printed, so a
failure can be replayed."""

import os
import random
import re
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

SEED = int(os.environ.get("FAULT_SEED", "0"))
STOP_WITHIN_S = 30
SMOKE = ["--preset", "toy-smoke", "--quiet", "--set", "eval.size=4", "--set", "train.checkpoint_every=1"]


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tempo_bench.commands.cli", *args]


def start(args: list[str]) -> subprocess.Popen:
    # a session of its own: the signal reaches every process of the command, as Ctrl-C would
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)


def logged_steps(db: Path, metric: str = "time/step") -> dict[str, list[int]]:
    """run_id -> the steps at which ``metric`` was logged, read straight from the sqlite store
    (while the command writes it)."""
    if not db.is_file():
        return {}
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5) as con:
            rows = con.execute("select run_uuid, step from metrics where key = ? order by step", (metric,)).fetchall()
    except sqlite3.Error:  # the store is still being created
        return {}
    out: dict[str, list[int]] = {}
    for run, step in rows:
        out.setdefault(run, []).append(step)
    return out


def checkpointed_step(root: Path) -> int:
    from tempo_bench.run.checkpoint import latest_checkpoint, load_state

    steps = [load_state(c)["step"] for c in map(latest_checkpoint, root.glob("*-s*-*")) if c is not None]
    return max(steps, default=0)


def interrupt_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 400) -> tuple[str, str]:
    deadline = time.time() + timeout
    while time.time() < deadline and proc.poll() is None:
        if ready():
            os.killpg(proc.pid, sig)
            break
        time.sleep(0.1)
    signalled = time.time()
    out, err = proc.communicate(timeout=120)
    assert proc.returncode in (130, -signal.SIGKILL), (
        f"the command was not interrupted mid-way (exit {proc.returncode}):\n{out[-2000:]}\n{err[-3000:]}")
    # a worker that lingers after its run is marked KILLED holds its parent until stop_processes'
    # 60 s timeout; ending the run's cleanup takes a few seconds
    assert time.time() - signalled < STOP_WITHIN_S, f"the command took {time.time() - signalled:.0f} s to stop"
    return out, err


def recovery_command(stderr: str) -> list[str]:
    """The command an interrupted tempo-bench printed on its last line, runnable here."""
    assert "Traceback" not in stderr, stderr[-3000:]
    last = [line for line in stderr.strip().splitlines() if line.strip()][-1]
    assert last.startswith("interrupted:"), stderr[-2000:]
    command = shlex.split(re.split(r"(?:Continue(?: it| the sweep)?): ", last)[-1])
    assert command[0] == "tempo-bench"
    return cli(*command[1:])


def runs_of(db: Path, experiment: str) -> list:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    return client.search_runs([client.get_experiment_by_name(experiment).experiment_id], max_results=1000)


def assert_each_step_once(db: Path, run_id: str, steps: int) -> None:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    for key in ("time/step", "reward/mean", "tokens/rollout"):
        logged = [m.step for m in client.get_metric_history(run_id, key)]
        assert logged == list(range(1, steps + 1)), f"{key}: steps {logged}"
    evals = [m.step for m in client.get_metric_history(run_id, "eval/mean_at_k")]
    assert evals == sorted(set(evals)) and evals[0] == 0 and evals[-1] == steps, evals


def test_run_ctrl_c_prints_the_resume_command_and_it_finishes_the_same_run(tmp_path, created_store):
    created_store(tmp_path)
    steps = 5
    stop_at = random.Random(f"{SEED}-run").randint(1, steps - 2)
    print(f"FAULT_SEED={SEED}: SIGINT after step {stop_at}")
    db = tmp_path / "mlflow.db"
    proc = start(cli("run", *SMOKE, "--method", "tempo", "--set", f"train.steps={steps}", "--out", str(tmp_path)))
    _, err = interrupt_when(proc, lambda: checkpointed_step(tmp_path / "tempo-bench") >= stop_at, signal.SIGINT)
    assert proc.returncode == 130
    command = recovery_command(err)
    assert command[-1] == "--resume"
    (run,) = runs_of(db, "tempo-bench")
    assert run.info.status == "KILLED"
    subprocess.run(command, check=True, timeout=400, capture_output=True)
    (run,) = runs_of(db, "tempo-bench")
    assert run.info.status == "FINISHED" and run.data.tags["steps_done"] == str(steps)
    assert_each_step_once(db, run.info.run_id, steps)


def test_run_sigterm_checkpoints_the_step_it_is_in_and_resume_finishes_it(tmp_path, created_store):
    """What a cluster scheduler sends before it kills a job: the run finishes its step, checkpoints
    it (no periodic checkpoint would have: checkpoint_every is 100), exits with the resume command,
    and that command finishes the same run with every step logged once."""
    created_store(tmp_path)
    steps, db = 4, tmp_path / "mlflow.db"
    args = [a if a != "train.checkpoint_every=1" else "train.checkpoint_every=100" for a in SMOKE]
    proc = start(cli("run", *args, "--method", "tempo", "--set", f"train.steps={steps}", "--out", str(tmp_path)))
    _, err = interrupt_when(proc, lambda: any(logged_steps(db).values()), signal.SIGTERM)
    assert "SIGTERM: the run checkpoints at the end of this step and stops" in err
    stopped_at = checkpointed_step(tmp_path / "tempo-bench")
    assert 1 <= stopped_at < steps
    command = recovery_command(err)
    assert command[-1] == "--resume"
    (run,) = runs_of(db, "tempo-bench")
    assert run.info.status == "KILLED"
    subprocess.run(command, check=True, timeout=400, capture_output=True)
    (run,) = runs_of(db, "tempo-bench")
    assert run.info.status == "FINISHED" and run.data.tags["steps_done"] == str(steps)
    assert_each_step_once(db, run.info.run_id, steps)


def test_a_second_process_on_a_live_run_is_refused_and_the_run_is_untouched(tmp_path, created_store, capsys):
    """`run --resume` while the original process still trains: one error naming that process,
    before the MLflow run is reopened; the original finishes with every step logged once."""
    from tempo_bench.commands.cli import main

    created_store(tmp_path)
    steps, db = 5, tmp_path / "mlflow.db"
    args = ["run", *SMOKE, "--method", "standard_ttt", "--set", f"train.steps={steps}", "--out", str(tmp_path)]
    proc = start(cli(*args))
    deadline = time.time() + 300
    while checkpointed_step(tmp_path / "tempo-bench") < 1 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before the second process could try"
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "is in use by process" in err and str(proc.pid) in err and "Traceback" not in err
    proc.communicate(timeout=300)
    assert proc.returncode == 0
    (run,) = runs_of(db, "tempo-bench")
    assert run.info.status == "FINISHED"
    assert_each_step_once(db, run.info.run_id, steps)


def test_a_run_killed_before_its_first_checkpoint_is_closed_by_the_resume(tmp_path, created_store, capsys):
    """A kill before the first checkpoint left the MLflow run RUNNING for good; `--resume` (which
    starts the run afresh) now marks that attempt KILLED, and the new attempt finishes."""
    from tempo_bench.commands.cli import main

    created_store(tmp_path)
    db = tmp_path / "mlflow.db"
    args = ["run", *SMOKE, "--method", "standard_ttt", "--set", "train.steps=3", "--set", "train.checkpoint_every=0",
            "--out", str(tmp_path)]
    proc = start(cli(*args[:-2], "--set", "train.steps=50", "--out", str(tmp_path)))
    interrupt_when(proc, lambda: len(logged_steps(db)) == 1, signal.SIGKILL)
    (killed,) = runs_of(db, "tempo-bench")
    assert killed.info.status == "RUNNING" and checkpointed_step(tmp_path / "tempo-bench") == 0
    assert main([*args, "--resume"]) == 0
    assert "is marked KILLED" in capsys.readouterr().out
    statuses = {run.info.run_id: run.info.status for run in runs_of(db, "tempo-bench")}
    assert statuses.pop(killed.info.run_id) == "KILLED" and list(statuses.values()) == ["FINISHED"]


def test_killing_compares_parent_leaves_no_worker_behind(tmp_path, created_store):
    """`compare --workers 2` whose parent is killed with SIGKILL (no chance to stop its workers):
    they ran on for good (about 700 MB each). Now each gets SIGTERM from the kernel: its run ends
    as KILLED in the store, and the worker exits."""
    created_store(tmp_path)
    db = tmp_path / "mlflow.db"
    proc = subprocess.Popen(cli("compare", "--preset", "toy-smoke", "--set", "eval.size=4", "--methods",
                                "standard_ttt,oracle", "--seeds", "0", "--workers", "2", "--set", "train.steps=40",
                                "--out", str(tmp_path)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while len(logged_steps(db)) < 2 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    workers = [int(p) for p in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()]
    assert proc.poll() is None and len(workers) >= 2, "both runs should be training"
    proc.kill()  # the parent alone, as the OOM killer or `kill -9 <pid>` would
    proc.wait()
    deadline = time.time() + STOP_WITHIN_S
    while any(Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()
              for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    alive = [pid for pid in workers if Path(f"/proc/{pid}").exists()
             and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower()]
    assert not alive, f"workers {alive} outlived their parent by {STOP_WITHIN_S} s"
    assert {run.info.status for run in runs_of(db, "compare-toy-smoke")} == {"KILLED"}


@pytest.mark.slow
@pytest.mark.parametrize("sig,workers", [(signal.SIGINT, "2"), (signal.SIGKILL, "1")], ids=["sigint-2-workers", "sigkill-sequential"])
def test_compare_interrupted_then_resumed_counts_every_run_once(tmp_path, created_store, sig, workers):
    from tempo_bench.analysis.runs import load_experiment

    steps = 4
    db = created_store(tmp_path)
    args = ["compare", *[a for a in SMOKE if a != "--quiet"], "--methods", "standard_ttt,tempo", "--seeds", "0",
            "--set", f"train.steps={steps}", "--set", "threads=1", "--workers", workers, "--out", str(tmp_path)]
    # sequential: stop in the second run (the first is finished and must be reused, not repeated)
    want_runs = 2 if workers == "1" else 1
    stop_at = random.Random(f"{SEED}-compare-{sig}").randint(1, steps - 1)
    print(f"FAULT_SEED={SEED}: signal {sig} once {want_runs} run(s) logged step {stop_at}")
    proc = start(cli(*args))

    def ready():
        logged = logged_steps(db)
        return len(logged) >= want_runs and max(logged[r][-1] for r in logged) >= stop_at and (
            workers == "2" or sorted(len(v) for v in logged.values())[0] >= 1)

    _, err = interrupt_when(proc, ready, sig)
    before = {r.info.run_id: r.info.status for r in runs_of(db, "compare-toy-smoke")}
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "RUNNING" not in before.values(), before
        command = recovery_command(err)
    else:
        command = cli(*args, "--resume")  # what the README says to run after a kill
    assert command[-1] == "--resume"
    done = subprocess.run(command, timeout=600, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    after = runs_of(db, "compare-toy-smoke")
    finished = [r for r in after if r.info.status == "FINISHED"]
    assert sorted(r.data.tags["method"] for r in finished) == ["standard_ttt", "tempo"]
    assert {r.info.run_id for r in after} >= set(before), "a logged run was lost"
    for run in finished:
        assert_each_step_once(db, run.info.run_id, steps)
        if before.get(run.info.run_id) == "FINISHED":
            assert run.info.end_time <= max(r.info.end_time or 0 for r in after)
    df = load_experiment("compare-toy-smoke", f"sqlite:///{db}")
    assert df.groupby("method").run_id.nunique().to_dict() == {"standard_ttt": 1, "tempo": 1}
    assert "| standard_ttt | 1 |" in done.stdout and "| tempo | 1 |" in done.stdout


def _sweep_spec(tmp_path: Path, sampler: str) -> Path:
    spec = {"preset": "toy-smoke", "study": "faults", "n_trials": 3, "sampler": {"name": sampler, "seed": 0},
            "pruner": {"name": "none"}, "seeds": [0], "stale_after_s": 1,
            "overrides": ["method=tempo", "train.steps=3", "eval.every=3", "eval.size=4"],
            "space": {"methods.tempo.recal_interval": {"type": "categorical", "choices": [1, 2, 3]}},
            "objective": {"metric": "eval/mean_at_k"}}
    if sampler == "grid":
        del spec["sampler"]["seed"]
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("sig,sampler", [(signal.SIGINT, "grid"), (signal.SIGKILL, "random")],
                         ids=["sigint-grid", "sigkill-random"])
def test_sweep_interrupted_then_rerun_completes_every_trial_once(tmp_path, created_store, sig, sampler):
    """Stopped in its second trial, then the same command again: every trial owed runs to
    COMPLETE exactly once. Ctrl-C: the trial marks itself interrupted; kill -9: the rerun finds it
    dead (no heartbeat for stale_after_s). Grid: the interrupted point runs again; other samplers:
    the interrupted trial is retried with its parameters."""
    from tempo_bench.analysis.runs import load_experiment

    from tempo_bench.experiments.sweep import load_spec, make_storage, open_study

    spec = _sweep_spec(tmp_path, sampler)
    db = created_store(tmp_path)
    command = cli("sweep", str(spec), "--out", str(tmp_path), "--quiet")
    stop_at = random.Random(f"{SEED}-sweep-{sig}").randint(1, 2)
    print(f"FAULT_SEED={SEED}: signal {sig} in the second trial after step {stop_at}")
    proc = start(command)

    def ready():  # the first trial complete, the second at step stop_at
        logged = logged_steps(db)
        return len(logged) >= 2 and sorted(v[-1] for v in logged.values())[0] >= stop_at

    _, err = interrupt_when(proc, ready, sig)
    if sig == signal.SIGINT:  # Ctrl-C: the trial interrupted, the parent run KILLED with the count
        # in its tag, nothing claims to be running (SIGKILL gives the sweep no chance to say so)
        assert proc.returncode == 130 and "1/3 trials finished" in err
        assert recovery_command(err) == command
        runs = runs_of(db, "sweep-faults")
        (parent,) = [r for r in runs if r.data.tags.get("sweep_parent") == "faults"]
        assert parent.info.status == "KILLED" and parent.data.tags["sweep_state"].startswith("interrupted")
        assert all(r.info.status != "RUNNING" for r in runs)
    else:
        time.sleep(1.5)  # older than stale_after_s
    rerun = subprocess.run(command, timeout=600, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout[-2000:] + rerun.stderr[-3000:]
    assert "interrupted" in rerun.stdout
    study = open_study(load_spec(spec), "faults", make_storage(None, tmp_path / "sweeps" / "faults"))
    states = [(t.number, t.state.name, t.params, t.user_attrs.get("retry_of")) for t in study.trials]
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    (failed,) = [t for t in study.trials if t.state.name == "FAIL" and "duplicate_of" not in t.user_attrs]
    assert "interrupted" in failed.user_attrs and len(complete) == 3, states
    (retry,) = [t for t in study.trials if t.user_attrs.get("retry_of") == failed.number]
    assert retry.state.name == "COMPLETE" and retry.params == failed.params, states
    # every point trained once, the rerun continuing the draws rather than replaying them
    assert sorted(t.params["methods.tempo.recal_interval"] for t in complete) == [1, 2, 3], states
    runs = runs_of(db, "sweep-faults")
    (parent,) = [r for r in runs if r.data.tags.get("sweep_parent") == "faults"]
    assert parent.info.status == "FINISHED" and parent.data.tags["sweep_state"].startswith("complete")
    assert sorted(r.info.status for r in runs if "trial_number" in r.data.tags) == ["FINISHED"] * 3 + ["KILLED"]
    df = load_experiment("sweep-faults", f"sqlite:///{db}")
    assert df.run_id.nunique() == 3 and sorted(df.trial.unique()) == sorted(t.number for t in complete)


def test_two_runs_started_at_once_on_a_new_store_both_succeed(tmp_path):
    """Both create the sqlite store and the experiment at the same moment (an alembic migration
    race without the store lock)."""
    args = cli("run", *SMOKE, "--set", "train.steps=1", "--set", "eval.size=2", "--set", "threads=1",
               "--out", str(tmp_path))
    procs = [start(args + ["--seed", str(seed)]) for seed in (0, 1)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (out, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
    runs = runs_of(tmp_path / "mlflow.db", "tempo-bench")
    assert sorted(r.data.tags["seed"] for r in runs) == ["0", "1"]
    assert all(r.info.status == "FINISHED" for r in runs)


def _fake_run(client, experiment_id, method, seed, status, steps_done, planned=4, identity="same", start=None):
    """A run as run_ttt logs it (tags, train.steps param, eval metric per step), without training."""
    from mlflow.entities import Metric

    run = client.create_run(experiment_id, run_name=f"{method}-s{seed}", start_time=start,
                            tags={"method": method, "seed": str(seed), "config_identity": identity})
    client.log_param(run.info.run_id, "train.steps", planned)
    client.log_batch(run.info.run_id, metrics=[Metric("eval/mean_at_k", 0.1 * s, 0, s) for s in range(steps_done + 1)]
                     + [Metric("time/step", 1.0, 0, s) for s in range(1, steps_done + 1)])
    if status == "FINISHED":
        client.set_tag(run.info.run_id, "steps_done", str(steps_done))
    if status != "RUNNING":
        client.set_terminated(run.info.run_id, status)
    return run.info.run_id


def test_analysis_counts_only_finished_runs_once_and_says_what_it_skipped(tmp_path, capsys):
    from mlflow.tracking import MlflowClient
    from tempo_bench.analysis.runs import PARTIAL, load_experiment, load_run_table

    from tempo_bench.commands.cli import main

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri)
    exp = client.create_experiment("faults")
    repeat = _fake_run(client, exp, "tempo", 0, "FINISHED", 4, start=1_000)  # an earlier repeat
    latest = _fake_run(client, exp, "tempo", 0, "FINISHED", 4, start=2_000)
    other = _fake_run(client, exp, "tempo", 1, "FINISHED", 4, identity="other")
    killed_trial = _fake_run(client, exp, "standard_ttt", 0, "RUNNING", 2)  # a killed sweep trial
    interrupted = _fake_run(client, exp, "standard_ttt", 1, "KILLED", 3)
    short = _fake_run(client, exp, "standard_ttt", 2, "FINISHED", 2)  # ended before its last step

    df = load_experiment("faults", uri)
    assert set(df.run_id) == {latest, other}
    assert sorted(why for _, why in df.attrs["skipped"]) == [
        "an earlier repeat of the same method, seed and config", "status KILLED", "status RUNNING",
        "stopped at step 2 of 4"]
    assert set(load_run_table("faults", uri).run_id) == {latest, other}
    final = df[df.metric == "eval/mean_at_k"].groupby("run_id").step.max()
    assert (final == 4).all()  # no run's step 2 counted as its "final" value

    partial = load_experiment("faults", uri, include_partial=True)
    labels = partial.groupby("run_id").method.first().to_dict()
    assert labels[killed_trial] == labels[interrupted] == labels[short] == "standard_ttt" + PARTIAL
    assert labels[latest] == "tempo" and repeat not in labels

    assert main(["figures", "--experiment", "faults", "--tracking-uri", uri, "--out", str(tmp_path / "fig")]) == 0
    out = capsys.readouterr().out
    assert "counted 2 run(s); skipped 4 run(s)" in out and "1 status RUNNING" in out
    table = (tmp_path / "fig" / "results.md").read_text()
    assert "| tempo | 2 |" in table and "standard_ttt" not in table
