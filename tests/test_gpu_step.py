"""scripts/gpu_check.sh's measurement, checked on CPU with the toy's architecture (its CPU
self-check): random weights built from a config alone, TEMPO and standard-TTT steps at two shapes,
the decode loops side by side, the goals' lines, and a budget that skips what it has no time for."""

import argparse
import json

import pytest

from tempo_bench.benchmarks.gpu_step import main, parse_shape
from tempo_bench.core.assets import SHIPPED_DIR

SMALL = ["--device", "cpu", "--dtype", "float32", "--steps", "1", "--lora-r", "4", "--threads", "1"]


def test_gpu_step_reports_each_shape_method_and_decode_loop(tmp_path, capsys):
    out = tmp_path / "reports.json"
    assert main([*SMALL, "--shape", f"{SHIPPED_DIR}:2x2x12", "--shape", f"{SHIPPED_DIR}:4x2x8",
                 "--json", str(out)]) == 0
    reports = json.loads(out.read_text())
    steps = reports["steps"]
    assert [(r["shape"].split(":")[-1], r["method"]) for r in steps] == [
        ("2x2x12", "tempo"), ("2x2x12", "standard_ttt"), ("4x2x8", "tempo"), ("4x2x8", "standard_ttt")]
    tempo, standard = steps[:2]
    assert "critic" in tempo["phases_s"] and "critic" not in standard["phases_s"]
    # TEMPO trains on 2 unlabeled + 2 labeled (toy-smoke) questions x n=2; standard TTT samples n_vote=8
    assert 0 < tempo["generated_tokens"] <= 4 * 2 * 12 and 0 < standard["generated_tokens"] <= 2 * 8 * 12
    assert tempo["rollout_tok_s"] > 0 and tempo["trained_tok_s"] > 0 and "peak_gib" not in tempo  # GPU memory on a GPU
    # the decode loops on the first shape's rollout: static draws eager's tokens (no graphs on CPU)
    assert [d["decode"] for d in reports["decodes"]] == ["eager", "static"]
    assert reports["decodes"][1]["rows_equal_to_eager"] == "4/4"
    printed = capsys.readouterr().out
    assert "| shape | method |" in printed and "TEMPO / standard step" in printed and "goal >= 25,000" in printed


def test_gpu_step_skips_shapes_past_its_budget_and_names_bad_shapes(tmp_path, capsys):
    out = tmp_path / "reports.json"
    assert main([*SMALL, "--methods", "standard_ttt", "--budget-s", "0", "--shape", f"{SHIPPED_DIR}:2x2x4",
                 "--shape", "Qwen3-0.6B:64x8x512", "--json", str(out)]) == 0
    reports = json.loads(out.read_text())
    assert len(reports["steps"]) == 1 and reports["skipped"] == ["Qwen3-0.6B:64x8x512"]  # the first always runs
    assert "skipped (--budget-s 0 spent): Qwen3-0.6B:64x8x512" in capsys.readouterr().out
    assert parse_shape("Qwen3-1.7B:16x8x512")[1:] == (16, 8, 512)
    with pytest.raises(argparse.ArgumentTypeError, match="expected MODEL:PROMPTSxNxTOKENS"):
        parse_shape("Qwen3-0.6B:16x8")
    with pytest.raises(argparse.ArgumentTypeError, match="no config.json for 'Qwen9'.*shipped: .*Qwen3-0.6B"):
        parse_shape("Qwen9:1x1x1")


def test_gpu_check_script_self_checks_on_cpu_and_fails_fast_without_a_gpu():
    """scripts/gpu_check.sh --device cpu (the script's CPU self-check) ends with its table; without
    --device on a machine with no GPU it stops in seconds, before building any model."""
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    import torch

    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(["bash", str(script), *SMALL, "--methods", "standard_ttt", "--shape", f"{SHIPPED_DIR}:2x2x6"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "| toy_model:2x2x6 | standard_ttt |" in done.stdout and "gpu_check: done in" in done.stdout
    if torch.cuda.is_available():
        return
    start = time.perf_counter()
    refused = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, timeout=120)
    assert refused.returncode != 0 and "sees no CUDA device" in refused.stderr
    assert time.perf_counter() - start < 60
