#!/usr/bin/env bash
# GPU check of the vLLM path, for a machine with a CUDA GPU and vLLM (about 10 minutes):
#   1. the tests marked vllm (tests/test_vllm.py) on CUDA, each in a process of its own (one
#      engine per process: vLLM does not promise to hand a GPU back to a second engine): sampled
#      log-probs against teacher forcing for both weight syncs before and after an update, vLLM
#      following the policy, seeds, the adapter across a real sleep/wake, hf and vLLM as one
#      policy, the refusals, two-step runs and a kill/resume;
#   2. a 10-step TEMPO run with vLLM rollouts and training on the same GPU (sleep mode on) on a
#      random Qwen3 with head_dim 128 and the toy's tokenizer.
# CI runs the same tests on vLLM's CPU build (.ci/run, the vLLM stage).
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
export OMP_WAIT_POLICY=PASSIVE TEMPO_BENCH_REQUIRE_VLLM=1
start=$(date +%s)
mapfile -t tests < <(python -m pytest -q --collect-only -m vllm tests/test_vllm.py | grep '::')
failed=0
for test in "${tests[@]}"; do
  python -m pytest -q -s -rs "$test" | grep -E "largest|passed|failed|error" || failed=1
done
out=$(mktemp -d)
tempo-bench toy-model random --out "$out/qwen3-hd128" --arch qwen3 --head-dim 128
time tempo-bench run --preset toy-smoke --method tempo --set rollout.backend=vllm --set train.steps=10 \
  --set model.path="$out/qwen3-hd128" --set model.device=cuda --set rollout.vllm.gpu_memory_utilization=0.3 \
  --out "$out" --quiet
(( failed == 0 )) || { echo "gpu_check_vllm: a test failed (above)"; exit 1; }
echo "gpu_check_vllm: ${#tests[@]} tests and the run passed in $(( $(date +%s) - start )) s (run folder: $out)"
