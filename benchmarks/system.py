"""Whole-process measurements, each in fresh subprocesses: sweep sharing (8 toy-smoke TEMPO trials
in one sweep worker against 8 separate `tempo-bench run` processes) and the peak resident memory
of a toy comparison."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LRS = [1e-4, 1.5e-4, 2e-4, 2.5e-4, 3e-4, 3.5e-4, 4e-4, 4.5e-4]
SWEEP_SPEC = """preset: toy-smoke
study: bench-sharing
overrides: [method=tempo]
space:
  train.lr: {{type: categorical, choices: {lrs}}}
objective: {{metric: eval/mean_at_k, mode: final, direction: maximize}}
n_trials: {n}
sampler: {{name: grid, seed: 0}}
pruner: {{name: none}}
seeds: [0]
"""


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "tempo_bench.commands.cli", *args]


def _run(cmd: list[str], cwd: str) -> float:
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=cwd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def sweep_sharing(trials: int = 8) -> dict:
    """One worker shares the base model, data, starting critic and initial evaluation across
    trials; separate processes each rebuild them."""
    lrs = LRS[:trials]
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "sweep.yaml"
        spec.write_text(SWEEP_SPEC.format(lrs=lrs, n=trials))
        shared = _run(_cli("sweep", str(spec), "--out", f"{tmp}/sweep", "--quiet"), tmp)
        separate = sum(_run(_cli("run", "--preset", "toy-smoke", "--method", "tempo", "--set", f"train.lr={lr}",
                                 "--out", f"{tmp}/run{i}", "--quiet"), tmp) for i, lr in enumerate(lrs))
    return {"sweep_one_worker_s": shared, "separate_processes_s": separate, "sweep_time_ratio": shared / separate,
            "trials": trials}


def peak_rss(preset: str = "toy-smoke", seeds: str = "0") -> dict:
    """Peak RSS of `tempo-bench compare --preset PRESET --methods all`: the child's maximum
    resident set, read by a fresh parent so that no other child counts."""
    with tempfile.TemporaryDirectory() as tmp:
        probe = ("import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, "
                 "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); "
                 "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", probe, *_cli("compare", "--preset", preset, "--methods", "all",
                                                                  "--seeds", seeds, "--out", tmp)],
                             cwd=tmp, env={**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}, check=True,
                             capture_output=True, text=True)
        seconds = time.perf_counter() - start
    return {"peak_rss_mb": int(out.stdout.strip()) / 1024, "rss_run": f"compare --preset {preset} --methods all "
            f"--seeds {seeds}", "rss_run_s": seconds}
