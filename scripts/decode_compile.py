"""Does torch.compile pay for the fused decode step on this CPU? (issue 19; the answer on a 2-core
VM was no: 19-34 s to compile for 1.45x per rollout, repaid after 106-132 rollouts).

    python scripts/decode_compile.py [--reps 5] [--threads 2]

Times the hf backend's rollout of the bench's batch (16 toy prompts x 8 samples, 80 new tokens)
with the fused step compiled by ``torch.compile(dynamic=True)`` (the first compiled rollout:
compile included), then the eager and the compiled step in turns, the median of ``--reps`` each.
A compiled step needs static shapes, so it attends over the whole preallocated cache (future positions masked by the
additive bias, the cache zeroed so that masked entries are finite) and writes the new key and
value with ``index_copy_`` at a tensor position; the eager step slices the cache to the current
length instead. Prints both times, the speedup and how many rollouts repay the compile.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def static_step(tokens, positions, at, bias, cos_table, sin_table, embed, layers, norm, head, keys, values,
                heads: int, kv_heads: int, dim: int, eps: float):
    """The fused step over the whole cache capacity (shapes fixed for a rollout; rows dynamic)."""
    import torch
    import torch.nn.functional as F

    rows, qk = tokens.shape[0], (heads + kv_heads) * dim
    cos, sin = F.embedding(positions, cos_table)[:, None], F.embedding(positions, sin_table)[:, None]
    bias.index_fill_(3, at, 0.0)
    hidden = F.embedding(tokens, embed)
    for (norm_in, projection, o_w, norm_post, gate_up_w, down_w), k_cache, v_cache in zip(layers, keys, values):
        out = F.linear(F.rms_norm(hidden, hidden.shape[-1:], norm_in, eps), projection)
        roped = out[:, :qk].view(rows, -1, dim) * cos + out[:, qk: 2 * qk].view(rows, -1, dim) * sin
        k_cache.index_copy_(3, at, roped[:, heads:, :, None])
        v_cache.index_copy_(2, at, out[:, 2 * qk:].view(rows, kv_heads, 1, dim))
        q = roped[:, :heads].reshape(rows, kv_heads, heads // kv_heads, dim)
        probs = torch.softmax(torch.matmul(q, k_cache) + bias, -1)
        hidden = torch.addmm(hidden, torch.matmul(probs, v_cache).reshape(rows, heads * dim), o_w.t())
        gate, up = F.linear(F.rms_norm(hidden, hidden.shape[-1:], norm_post, eps), gate_up_w).chunk(2, -1)
        hidden = torch.addmm(hidden, F.silu(gate) * up, down_w.t())
    return F.linear(F.rms_norm(hidden, hidden.shape[-1:], norm, eps), head)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5, help="timed rollouts per variant after the first")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)

    import torch

    from tempo_bench.benchmarks.timing import in_turns
    from tempo_bench.config import LoraConfig, ModelConfig, ToyTaskConfig
    from tempo_bench.policy.model import load_policy, load_tokenizer
    from tempo_bench.rollout import SamplingParams, get_backend, llama_decode
    from tempo_bench.tasks import load_task_data

    torch.set_num_threads(args.threads)
    compiled = torch.compile(static_step, dynamic=True)

    class CompiledDecoder(llama_decode.LlamaDecoder):
        def start(self, cache, attention, new_tokens):
            super().start(cache, attention, new_tokens)
            for k in self.keys:
                k[..., self.length:] = 0
            for v in self.values:
                v[:, :, self.length:] = 0

        @torch.no_grad()
        def __call__(self, tokens, positions):
            at = torch.tensor([self.length], device=tokens.device)
            out = compiled(tokens, positions, at, self.bias, self.cos, self.sin, self.embed, self.layers, self.norm,
                           self.head, self.keys, self.values, self.heads, self.kv_heads, self.head_dim, self.eps)
            self.length += 1
            return out

    tokenizer = load_tokenizer("toy")
    backend = get_backend("hf")(load_policy(ModelConfig(), LoraConfig()), tokenizer)
    texts = [q.prompt for q in load_task_data(ToyTaskConfig()).test[:16]]
    sampling = SamplingParams(n=8, temperature=1.0, max_new_tokens=80)

    def rollout_with(decoder):  # the hf backend builds its step from llama_decode.LlamaDecoder
        def run():
            llama_decode.LlamaDecoder = decoder
            try:
                backend.generate(texts, sampling)
            finally:
                llama_decode.LlamaDecoder = eager_decoder
        return run

    eager_decoder = llama_decode.LlamaDecoder
    start = time.perf_counter()
    rollout_with(CompiledDecoder)()
    first = time.perf_counter() - start
    print(f"compiled: first rollout {first:.1f} s (compile included)", flush=True)
    median = in_turns({"eager": rollout_with(eager_decoder), "compiled": rollout_with(CompiledDecoder)}, args.reps)
    eager, fast = median["eager"], median["compiled"]
    print(f"eager fused step: {eager:.3f} s per rollout", flush=True)
    saved = eager - fast
    repay = f"{(first - fast) / saved:.0f} rollouts" if saved > 0 else "never"
    print(f"compiled: {fast:.3f} s per rollout ({eager / fast:.2f}x eager); the compile is repaid after {repay}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
