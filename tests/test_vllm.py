"""The vllm rollout backend against the hf backend on the toy model.

The merge test runs anywhere. The engine tests need a CUDA GPU and vLLM (pip install
'tempo-bench[vllm]') and are skipped otherwise; scripts/gpu_check_vllm.sh runs each in its own process
(one vLLM engine per process)."""

import copy
import importlib.util

import pytest
import torch
from batches import scale_lora, trained_toy_policy

from tempo_bench.config import load_config
from tempo_bench.policy.model import load_tokenizer
from tempo_bench.rollout import SamplingParams, get_backend
from tempo_bench.rollout.vllm import merged_lora_weights
from tempo_bench.tasks import load_task_data

needs_gpu = pytest.mark.skipif(
    not torch.cuda.is_available() or importlib.util.find_spec("vllm") is None,
    reason="needs a CUDA GPU and vLLM (pip install 'tempo-bench[vllm]'); run scripts/gpu_check_vllm.sh on one",
)


def test_merged_weights_equal_peft_merge():
    policy = trained_toy_policy(scale=0.05)
    merged = copy.deepcopy(policy).merge_and_unload().state_dict()
    weights = dict(merged_lora_weights(policy))
    assert len(weights) == 4 * 7  # 4 layers x 7 target modules
    for name, value in weights.items():
        assert torch.allclose(value, merged[name], atol=1e-6), name
    base = copy.deepcopy(policy).unload().state_dict()  # the adapter dropped, not merged
    assert all(not torch.allclose(value, base[name]) for name, value in weights.items())


def engine_and_hf(sync: str):
    config = load_config("toy-smoke", ["rollout.backend=vllm", "model.device=cuda", f"rollout.vllm.sync={sync}",
                                       "rollout.vllm.gpu_memory_utilization=0.2", "rollout.vllm.enforce_eager=true"])
    tokenizer = load_tokenizer("toy")
    policy = trained_toy_policy(scale=0.05, device="cuda")
    vllm_backend = get_backend("vllm").create(config, policy, tokenizer, "/tmp/tempo-bench-vllm-test")
    return vllm_backend, get_backend("hf")(policy, tokenizer), tokenizer


@needs_gpu
@pytest.mark.parametrize("sync", ["lora", "merged"])
def test_vllm_greedy_matches_hf(sync):
    """Temperature 0 on the 32 toy-smoke test questions: the same tokens (float32 both sides; a
    near-tie may flip one) and log-probabilities within 1e-3."""
    vllm_backend, hf_backend, _ = engine_and_hf(sync)
    prompts = [q.prompt for q in load_task_data(load_config("toy-smoke").task).test]
    greedy = SamplingParams(n=1, greedy=True, max_new_tokens=80)
    ours, ref = vllm_backend.generate(prompts, greedy), hf_backend.generate(prompts, greedy)
    same = [a == b for a, b in zip(ours.token_ids, ref.token_ids)]
    assert sum(same) >= len(prompts) - 1, f"{sum(same)}/{len(prompts)} identical"
    for a, b, s in zip(ours.logprobs, ref.logprobs, same):
        if s:
            assert torch.allclose(torch.tensor(a), torch.tensor(b), atol=1e-3)
    vllm_backend.close()


@needs_gpu
def test_vllm_sync_follows_the_policy():
    """After a change to the adapter and sync_weights, vLLM serves the new policy."""
    vllm_backend, hf_backend, _ = engine_and_hf("lora")
    scale_lora(vllm_backend.policy, -3.0)
    vllm_backend.sync_weights()
    prompts = ["Q:347+285\n", "Q:999+1\n", "Q:12+9\n"]
    greedy = SamplingParams(n=1, greedy=True, max_new_tokens=80)
    assert vllm_backend.generate(prompts, greedy).token_ids == hf_backend.generate(prompts, greedy).token_ids
    sampled = vllm_backend.generate(prompts, SamplingParams(n=4, temperature=1.0, max_new_tokens=80))
    assert sampled.num_prompts == 3 and len(sampled.token_ids) == 12
    assert all(len(ids) == len(lps) for ids, lps in zip(sampled.token_ids, sampled.logprobs))
    vllm_backend.close()
