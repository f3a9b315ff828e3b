#!/usr/bin/env bash
# GPU check without vLLM, MLflow or network (issue 17), about 5 minutes on one GPU: random weights
# of Qwen3-0.6B (from the shipped config.json), the hf rollout backend on CUDA, LoRA on the policy
# and on a critic that shares the policy's base; one warm-up and one measured step of TEMPO and of
# standard TTT. Prints, per method, the step time, its phases, generated tokens per second and the
# peak GPU memory beside the memory plan's figure for the same config.
#
# Needs torch, transformers, peft and accelerate, plus tempo-bench's small pure-Python needs
# (pydantic with pydantic-core, annotated-types and typing-inspection; pyyaml; tqdm; numpy, scipy,
# scikit-learn). On a GPU machine that cannot download, carry the missing ones as wheels in .whl/
# (see /work/.library/device/README.md) and install them with --target before this script.
# Usage: scripts/gpu_check.sh [python -m tempo_bench.benchmarks.gpu_step options, e.g. --max-new-tokens 1024]
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1
python3 - <<'PY'
import importlib.util
missing = [m for m in ("torch", "transformers", "peft", "accelerate", "pydantic", "yaml", "tqdm", "numpy", "scipy",
                       "sklearn") if importlib.util.find_spec(m) is None]
if missing:
    raise SystemExit(f"gpu_check: missing Python packages: {', '.join(missing)}")
PY
start=$(date +%s)
# not `python3 benchmarks/gpu_step.py`: its folder first on sys.path would shadow the standard
# library's `profile` with benchmarks/profile.py
timeout 540 python3 -c 'import runpy, sys; sys.argv[0] = "gpu_step"; runpy.run_path("benchmarks/gpu_step.py", run_name="__main__")' "$@"
echo "gpu_check: done in $(( $(date +%s) - start )) s"
