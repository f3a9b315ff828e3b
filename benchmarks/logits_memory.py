"""Peak host memory and time of one policy forward + backward pass on a large vocabulary, the
log-probabilities and entropy computed two ways, each in a fresh process (peak RSS is per process):

- whole: the logits of every position, one float32 log-softmax over all of them for the
  log-probabilities, another for the entropy (the suite before 2026-12-05);
- lean: the language-model head applied to the response positions' hidden states in checkpointed
  chunks of at most 2^26 logits, the float32 log-softmax and the entropy from the same chunk
  (policy.batch.response_logprobs; what policy_update does now).

A random-weight model with Qwen3's vocabulary (151,936) and a small body, so that the logits
dominate as they do at 0.6B-8B:

    python -m tempo_bench.benchmarks.logits_memory [--rows 8 --prompt 128 --response 384]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

VOCAB = 151_936


def tiny_qwen_vocab_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096)
    return LlamaForCausalLM(config)


def one_pass(variant: str, rows: int, prompt: int, response: int) -> dict:
    from tempo_bench.core.algos import masked_mean, token_entropy, token_logprobs
    from tempo_bench.policy.batch import make_train_batch, response_logprobs

    model = tiny_qwen_vocab_model()
    generator = torch.Generator().manual_seed(1)
    prompts = [torch.randint(VOCAB, (prompt,), generator=generator).tolist() for _ in range(rows)]
    responses = [torch.randint(VOCAB, (response,), generator=generator).tolist() for _ in range(rows)]
    batch = make_train_batch(prompts, responses, pad_id=0)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    if variant == "whole":
        logits = model(input_ids=batch.input_ids).logits
        logits = logits.gather(1, batch.response_index.unsqueeze(-1).expand(-1, -1, VOCAB))
        logp = token_logprobs(logits.float(), batch.response_ids)
        masked_mean(-logp, batch.mask).backward()
        entropy = masked_mean(token_entropy(logits.detach()), batch.mask)
    else:
        logp, entropy = response_logprobs(model, batch, temperature=1.0)
        masked_mean(-logp, batch.mask).backward()
        entropy = masked_mean(entropy, batch.mask)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"variant": variant, "seconds": round(seconds, 2), "peak_rise_gib": round((peak - before) / 2**20, 2),
            "entropy": float(entropy), "grad_norm": float(torch.cat([p.grad.reshape(-1) for p in model.parameters()
                                                                      if p.grad is not None]).norm())}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tempo_bench.benchmarks.logits_memory", description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--response", type=int, default=384)
    parser.add_argument("--variant", choices=["whole", "lean"], help="(internal) measure one variant in this process")
    args = parser.parse_args(argv)
    if args.variant:
        print(json.dumps(one_pass(args.variant, args.rows, args.prompt, args.response)))
        return 0
    results = []
    for variant in ("whole", "lean"):
        done = subprocess.run([sys.executable, "-m", "tempo_bench.benchmarks.logits_memory", "--variant", variant,
                               "--rows", str(args.rows), "--prompt", str(args.prompt), "--response", str(args.response)],
                              capture_output=True, text=True, check=True)
        results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    whole, lean = results
    print(f"{args.rows} rows x ({args.prompt} prompt + {args.response} response) tokens, vocabulary {VOCAB:,}:")
    for r in results:
        print(f"  {r['variant']:<6} peak RSS rise {r['peak_rise_gib']:6.2f} GiB   {r['seconds']:6.2f} s   "
              f"entropy {r['entropy']:.6f}   grad norm {r['grad_norm']:.6f}")
    print(f"  lean / whole: memory {lean['peak_rise_gib'] / whole['peak_rise_gib']:.2f}x, "
          f"time {lean['seconds'] / whole['seconds']:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
