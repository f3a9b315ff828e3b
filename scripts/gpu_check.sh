#!/usr/bin/env bash
# The one GPU measurement (issues 17 and 26), under 8 minutes on one GPU, without vLLM, MLflow or
# network: random weights of Qwen3-0.6B and Qwen3-1.7B (from the shipped configs), the hf rollout
# backend on CUDA, LoRA on the policy and on a critic sharing its base; per shape (16 x 8 x 512 and
# 64 x 8 x 512 on 0.6B, 16 x 8 x 512 on 1.7B) a warm-up and a measured step of TEMPO and of standard
# TTT: step time, its phases, generated and trained tokens per second, peak GPU memory beside the
# plan; then the hf decode loops (eager, static, graphs) side by side on the first shape; then issue
# 26's goals as ratios from this one run. Shapes that would start after --budget-s (420 s) are
# listed as skipped. Output: JSON lines, a table, the goals; --json FILE keeps them all.
#
# Needs torch, transformers, peft and accelerate, plus tempo-bench's small pure-Python needs
# (pydantic with pydantic-core, annotated-types and typing-inspection; pyyaml; tqdm; numpy, scipy,
# scikit-learn). On a GPU machine that cannot download, carry the missing ones as wheels in .whl/
# (see /work/.library/device/README.md) and install them with --target before this script.
# It checks them, and that a GPU is visible, before building anything (seconds).
# Usage: scripts/gpu_check.sh [python -m tempo_bench.benchmarks.gpu_step options, e.g. --json out.json]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
python3 - "$@" <<'PY'
import importlib.util
missing = [m for m in ("torch", "transformers", "peft", "accelerate", "pydantic", "yaml", "tqdm", "numpy", "scipy",
                       "sklearn") if importlib.util.find_spec(m) is None]
if missing:
    raise SystemExit(f"gpu_check: missing Python packages: {', '.join(missing)}")
import sys
import torch
if not any(a == "--device" or a.startswith("--device=") for a in sys.argv[1:]) and not torch.cuda.is_available():
    raise SystemExit(f"gpu_check: torch {torch.__version__} sees no CUDA device (--device cpu checks the script itself)")
PY
start=$(date +%s)
# not `python3 benchmarks/gpu_step.py`: its folder first on sys.path would shadow the standard
# library's `profile` with benchmarks/profile.py
timeout 480 python3 -c 'import runpy, sys; sys.argv[0] = "gpu_step"; runpy.run_path("benchmarks/gpu_step.py", run_name="__main__")' "$@"
echo "gpu_check: done in $(( $(date +%s) - start )) s"
