"""Rollout speed: the hf backend against bare ``model.generate`` on the same batch (same model,
prompts, samples per prompt, max new tokens, temperature), and against a teacher-forced forward
pass over the tokens the backend produced (a floor: the same tokens, computed in parallel)."""

from __future__ import annotations


import torch

from tempo_bench.benchmarks.timing import in_turns
from tempo_bench.config import LoraConfig, ModelConfig, ToyTaskConfig
from tempo_bench.policy.batch import generation_batch, model_inputs
from tempo_bench.policy.model import load_policy, load_tokenizer
from tempo_bench.rollout import SamplingParams, get_backend
from tempo_bench.tasks import load_task_data


def _general_decode(backend, fn):
    """``fn`` with the backend decoding by transformers' own forward for each token (its general path)."""
    def run():
        backend.fused_decode = False
        try:
            return fn()
        finally:
            backend.fused_decode = True
    return run


@torch.no_grad()
def compare_rollouts(prompts: int = 16, n: int = 8, max_new_tokens: int = 80, reps: int = 7, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    tokenizer = load_tokenizer("toy")
    policy = load_policy(ModelConfig(), LoraConfig())
    texts = [q.prompt for q in load_task_data(ToyTaskConfig()).test[:prompts]]
    backend = get_backend("hf")(policy, tokenizer)
    sampling = SamplingParams(n=n, temperature=1.0, max_new_tokens=max_new_tokens)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    width = max(map(len, ids))
    input_ids = torch.full((len(ids), width), tokenizer.pad_token_id)
    attention = torch.zeros_like(input_ids)
    for row, x in enumerate(ids):
        input_ids[row, width - len(x):] = torch.tensor(x)
        attention[row, width - len(x):] = 1
    policy.eval()
    torch.manual_seed(0)
    generation = backend.generate(texts, sampling)
    batch = generation_batch(generation, tokenizer.pad_token_id)
    median = in_turns({
        "ours": lambda: backend.generate(texts, sampling),
        "general": _general_decode(backend, lambda: backend.generate(texts, sampling)),
        "bare": lambda: policy.generate(
            input_ids=input_ids, attention_mask=attention, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
            max_new_tokens=max_new_tokens, num_return_sequences=n, eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id),
        # a floor: the same tokens teacher-forced in one pass through the weights the rollout
        # samples with (the merged copy: no LoRA matmuls), the way training passes run (causal, no
        # padding mask): what decoding would cost with no per-token overhead
        "floor": lambda: backend._sampler()(**model_inputs(batch, "cpu")),
    }, reps)
    ours, general, bare, forward = median["ours"], median["general"], median["bare"], median["floor"]
    return {"ours_rollout_s": ours, "generate_rollout_s": bare, "forward_floor_s": forward,
            "transformers_decode_rollout_s": general, "fused_decode_speedup": general / ours,
            "rollout_overhead_vs_generate": ours / bare, "rollout_vs_forward_floor": ours / forward,
            "rollout_tokens": generation.num_tokens, "rows": prompts * n, "reps": reps}
