"""Random-weight models with the toy's tokenizer: standard Llama or Qwen3 checkpoints of chosen
shapes, for checking a backend on shapes the toy does not have (vLLM's CPU attention has no kernel
for the toy's head_dim 16). They answer nothing: their samples are random text, which is all a
log-probability or weight-sync check needs. ``tempo-bench toy-model random`` writes one.

Deterministic from the seed: the same folder (config, weights) for the same arguments.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from tempo_bench.core.assets import SHIPPED_DIR

ARCHITECTURES = ("llama", "qwen3")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "generation_config.json")


def random_model_config(arch: str = "llama", head_dim: int = 64, layers: int = 2, heads: int = 2,
                        kv_heads: int | None = None, max_positions: int = 512):
    """A transformers config of ``arch`` over the toy's vocabulary. Weights are drawn with std 0.3
    (transformers' 0.02 gives near-uniform next-token distributions, where greedy decoding is
    decided by float noise)."""
    from transformers import LlamaConfig, Qwen3Config

    if arch not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}")
    toy = LlamaConfig.from_pretrained(SHIPPED_DIR)
    hidden = heads * head_dim
    cls = {"llama": LlamaConfig, "qwen3": Qwen3Config}[arch]
    return cls(vocab_size=toy.vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads or heads,
               head_dim=head_dim, max_position_embeddings=max_positions, initializer_range=0.3,
               tie_word_embeddings=True, bos_token_id=toy.bos_token_id, eos_token_id=toy.eos_token_id,
               pad_token_id=toy.pad_token_id)


def build_random_model(out: Path, arch: str = "llama", head_dim: int = 64, layers: int = 2, heads: int = 2,
                       kv_heads: int | None = None, max_positions: int = 512, seed: int = 0) -> Path:
    """Write a random ``arch`` model with the toy's tokenizer to ``out``; returns ``out``."""
    from transformers import AutoModelForCausalLM

    config = random_model_config(arch, head_dim, layers, heads, kv_heads, max_positions)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(out)
    for name in TOKENIZER_FILES:
        shutil.copy(SHIPPED_DIR / name, out / name)
    manifest = dict(built_by="tempo-bench toy-model random", arch=arch, head_dim=head_dim, layers=layers,
                    heads=heads, kv_heads=kv_heads or heads, max_positions=max_positions, seed=seed,
                    note="random weights: for backend checks, not for accuracy")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
