"""A real MLflow server on loopback goes away mid-run and comes back: the run goes on, buffers
its writes, and in the end the server holds every step exactly once."""

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tempo_bench.config import load_config
from tempo_bench.core.loggers import MLflowLogger
from tempo_bench.core.tracking import check_tracking
from tempo_bench.run.run import run_ttt

STEPS = 6


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(port: int, store) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port),
         "--backend-store-uri", f"sqlite:///{store / 'mlflow.db'}", "--artifacts-destination",
         str(store / "artifacts"), "--workers", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2)
            return proc
        except OSError:
            time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    pytest.fail("mlflow server did not start")


def stop_server(proc) -> None:
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def test_server_down_mid_run_loses_nothing(tmp_path, created_store):
    created_store(tmp_path)  # the server's backend store
    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = {"proc": start_server(port, tmp_path)}
    check_tracking(uri)
    config = load_config("toy-smoke", [f"train.steps={STEPS}", "eval.every=1", "eval.size=4", "threads=1",
                                       f"out={tmp_path}"])
    spool = tmp_path / "run" / "spool.jsonl"
    logger = MLflowLogger(uri, "outage", "standard_ttt-s0", spool_path=spool)
    seen_spool = []

    def outage(step, evals):
        if step == 2:
            stop_server(server["proc"])
        if step == 4:
            seen_spool.append(spool.is_file() and spool.stat().st_size > 0)
            server["proc"] = start_server(port, tmp_path)

    try:
        with logger:
            run_ttt(config, logger, out_dir=tmp_path / "run", progress=False, on_step=outage)
        assert seen_spool == [True], "writes during the outage were not spooled to disk"
        assert not spool.exists() and not logger.pending
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=uri)
        run = client.get_run(logger.run_id)
        assert run.info.status == "FINISHED"
        for key in ("policy/loss", "reward/mean", "time/step"):
            assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, STEPS + 1)), key
        assert [m.step for m in client.get_metric_history(run.info.run_id, "eval/mean_at_k")] == list(range(STEPS + 1))
        files = {a.path for a in client.list_artifacts(run.info.run_id, "rollouts")}
        assert len(files) == STEPS + 1
    finally:
        stop_server(server["proc"])


@pytest.mark.parametrize("command", ["run", "compare", "sweep"])
def test_unreachable_or_silent_server_is_an_error_before_any_work(command, tmp_path, capsys, monkeypatch):
    """Nothing listening, or a server that accepts connections and never answers: one error line
    with the URL, exit code 2, within the connect timeout, and no output folder work done."""
    from tempo_bench.commands.cli import main
    from tempo_bench.core import tracking

    monkeypatch.setattr(tracking, "CONNECT_TIMEOUT_S", 2.0)
    closed = f"http://127.0.0.1:{free_port()}"
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()  # accepts (the kernel completes the handshake) and never answers
        hanging = f"http://127.0.0.1:{silent.getsockname()[1]}"
        for uri in (closed, hanging):
            target = (["sweep", str(Path(__file__).resolve().parent.parent / "sweeps" / "smoke.yaml")]
                      if command == "sweep" else [command, "--preset", "toy-smoke"])
            start = time.monotonic()
            assert main([*target, "--tracking-uri", uri, "--out", str(tmp_path / "out")]) == 2
            err = capsys.readouterr().err
            assert time.monotonic() - start < 20, f"{uri}: took {time.monotonic() - start:.0f} s"
            assert err.startswith("error: ") and uri in err and "does not answer" in err, err
    out = tmp_path / "out"  # created empty by the writability check, nothing in it
    assert not out.exists() or not any(out.iterdir())
