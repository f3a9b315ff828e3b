#!/usr/bin/env bash
# GPU check of the vLLM path (issue 7), for a machine with a CUDA GPU. Under 10 minutes once vLLM
# is installed:
#   1. the vLLM backend against the hf backend on the toy model at temperature 0 (lora and merged
#      weight sync), and vLLM following the policy after a weight sync (tests/test_vllm.py);
#   2. a 10-step toy TEMPO run with vLLM rollouts, training on the same GPU (sleep mode on).
# Usage: scripts/gpu_check_vllm.sh [--install]   (--install: a fresh .venv-gpu with tempo-bench[vllm,test])
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ "${1:-}" == "--install" ]]; then
  python3 -m venv .venv-gpu
  . .venv-gpu/bin/activate
  pip install -q -e ".[vllm,test]"
fi
python -c "import torch, vllm; assert torch.cuda.is_available(), 'no CUDA GPU visible'; \
print('torch', torch.__version__, '| vllm', vllm.__version__, '|', torch.cuda.get_device_name())"
export OMP_WAIT_POLICY=PASSIVE
start=$(date +%s)
# one vLLM engine per process: each engine test in its own pytest run
for test in "test_vllm_greedy_matches_hf[lora]" "test_vllm_greedy_matches_hf[merged]" test_vllm_sync_follows_the_policy; do
  python -m pytest -q -rs "tests/test_vllm.py::$test"
done
out=$(mktemp -d)
time tempo-bench run --preset toy-smoke --method tempo --set rollout.backend=vllm --set train.steps=10 \
  --set rollout.vllm.gpu_memory_utilization=0.3 --out "$out" --quiet
echo "gpu_check: all passed in $(( $(date +%s) - start )) s (run folder: $out)"
