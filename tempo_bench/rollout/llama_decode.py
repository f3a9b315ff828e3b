"""A decode step for Llama-architecture models (the toy's) in a few dozen operators per token.

A 64-wide toy model's decode time is per-operator overhead, not arithmetic (BENCHMARKS.md: about
100 small operators per token through transformers' forward, its mask building, cache objects and
output classes). This step computes the same function with the weights fused once per rollout
call: one matmul for q, k and v, one for gate and up, rotary tables indexed by position, the KV
cache in preallocated tensors and attention as two batched matmuls around a softmax with an
additive mask (for one query over a short cache, 3x faster on CPU than
``scaled_dot_product_attention`` with a boolean mask, measured). It mirrors transformers' Llama code (RMSNorm in float32, default RoPE, SiLU MLP, tied or
untied head); the log-probabilities of the tokens it samples are checked against a teacher-forced
forward pass of the same model (tests/test_rollout.py). Architectures with anything else (biases,
scaled RoPE, q/k norms, sliding windows) take the general path in ``hf.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def supports(model) -> bool:
    """Whether ``model`` (a plain causal LM on one device, not a peft wrapper, not spread over
    GPUs by accelerate) is a Llama this step reproduces."""
    from transformers import LlamaForCausalLM

    config = model.config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    devices = {p.device for p in model.parameters()}
    return (type(model).forward is LlamaForCausalLM.forward and getattr(config, "model_type", None) == "llama"
            and not config.attention_bias and not getattr(config, "mlp_bias", False)
            and config.hidden_act == "silu" and getattr(config, "pretraining_tp", 1) == 1
            and rope.get("rope_type", "default") == "default"
            and len(devices) == 1 and next(iter(devices)).type != "meta"
            and len(set(getattr(model, "hf_device_map", {}).values())) <= 1
            and all(type(layer.get_submodule(name)) is torch.nn.Linear
                    for layer in model.model.layers for name in PROJECTIONS))


class FusedWeights:
    """A model's weights as the step reads them (q/k/v and gate/up concatenated: copies, so they
    are rebuilt after the model's weights change) and its RoPE tables."""

    def __init__(self, model):
        config, inner = model.config, model.model
        self.eps, self.heads, self.kv_heads = config.rms_norm_eps, config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.embed = inner.embed_tokens.weight
        self.layers = [(
            layer.input_layernorm.weight,
            torch.cat([layer.self_attn.q_proj.weight, layer.self_attn.k_proj.weight, layer.self_attn.v_proj.weight]),
            layer.self_attn.o_proj.weight,
            layer.post_attention_layernorm.weight,
            torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]),
            layer.mlp.down_proj.weight,
        ) for layer in inner.layers[: config.num_hidden_layers]]
        self.norm, self.head = inner.norm.weight, model.lm_head.weight
        self.inv_freq, self.rope_scaling = inner.rotary_emb.inv_freq.float(), inner.rotary_emb.attention_scaling
        self.cos = self.sin = self.embed.new_empty(0, self.head_dim)

    def rope_tables(self, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [>= positions, head_dim] as transformers computes them (float32, then cast),
        extended when a call needs more positions than any before."""
        if self.cos.shape[0] < positions:
            freqs = torch.arange(positions, dtype=torch.float32, device=self.inv_freq.device)[:, None] * self.inv_freq
            emb = torch.cat([freqs, freqs], -1)
            self.cos = (emb.cos() * self.rope_scaling).to(self.embed.dtype)
            self.sin = (emb.sin() * self.rope_scaling).to(self.embed.dtype)
        return self.cos, self.sin


class LlamaDecoder:
    """The decode step over a KV cache of prompt keys and values (from a transformers prefill)."""

    def __init__(self, weights: FusedWeights, max_positions: int):
        self.eps, self.heads, self.kv_heads, self.head_dim = weights.eps, weights.heads, weights.kv_heads, weights.head_dim
        self.embed, self.layers, self.norm, self.head = weights.embed, weights.layers, weights.norm, weights.head
        self.cos, self.sin = weights.rope_tables(max_positions)
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.bias = None  # [R, 1, 1, capacity]: 0 where a row attends, -inf elsewhere (left padding, future)
        self.length = 0

    def start(self, cache, attention: torch.Tensor, new_tokens: int) -> None:
        """Take over a prefill's cache (rows already repeated n times) and its attention mask
        [R, L] (0 on left padding), with room for ``new_tokens`` more positions."""
        rows, length = attention.shape
        capacity = length + new_tokens
        for layer in cache.layers:
            # keys stored transposed, [R, kv heads, head_dim, capacity]: q @ keys[..., :t] needs no copy
            keys = layer.keys.new_empty(rows, layer.keys.shape[1], self.head_dim, capacity)
            values = layer.values.new_empty(rows, layer.values.shape[1], capacity, self.head_dim)
            keys[..., :length], values[:, :, :length] = layer.keys.transpose(-1, -2), layer.values
            self.keys.append(keys)
            self.values.append(values)
        dtype = self.embed.dtype
        self.bias = torch.full((rows, 1, 1, capacity), float("-inf"), dtype=dtype, device=attention.device)
        self.bias[:, 0, 0, :length] = torch.zeros(attention.shape, dtype=dtype, device=attention.device).masked_fill_(
            attention == 0, float("-inf"))
        self.length = length

    def select(self, index: torch.Tensor) -> None:
        """Keep only the rows at ``index`` (finished rows leave the batch)."""
        self.keys = [k[index] for k in self.keys]
        self.values = [v[index] for v in self.values]
        self.bias = self.bias[index]

    def _rms(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], -1)
        return x * cos + rotated * sin

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits [R, V] after feeding ``tokens`` [R] at ``positions`` [R]."""
        rows, at = tokens.shape[0], self.length
        cos, sin = self.cos[positions][:, None, None, :], self.sin[positions][:, None, None, :]  # [R, 1, 1, hd]
        self.bias[:, 0, 0, at] = 0.0
        bias, scale, repeat = self.bias[..., : at + 1], self.head_dim ** -0.5, self.heads // self.kv_heads
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        hidden = self.embed[tokens]  # [R, D]
        for (norm_in, qkv_w, o_w, norm_post, gate_up_w, down_w), keys, values in zip(self.layers, self.keys, self.values):
            qkv = F.linear(self._rms(hidden, norm_in), qkv_w)
            q, k, v = qkv.split([q_size, kv_size, kv_size], -1)
            q = self._rope(q.view(rows, self.heads, 1, self.head_dim), cos, sin)
            keys[..., at] = self._rope(k.view(rows, self.kv_heads, 1, self.head_dim), cos, sin)[:, :, 0]
            values[:, :, at] = v.view(rows, self.kv_heads, self.head_dim)
            past_k, past_v = keys[..., : at + 1], values[:, :, : at + 1]
            if repeat > 1:  # grouped-query attention: each key/value head serves `repeat` query heads
                past_k, past_v = past_k.repeat_interleave(repeat, 1), past_v.repeat_interleave(repeat, 1)
            scores = torch.matmul(q, past_k) * scale + bias  # [R, heads, 1, at + 1]
            attended = torch.matmul(torch.softmax(scores.float(), -1).to(q.dtype), past_v)
            hidden = hidden + F.linear(attended.reshape(rows, q_size), o_w)
            gate, up = F.linear(self._rms(hidden, norm_post), gate_up_w).chunk(2, -1)
            hidden = hidden + F.linear(F.silu(gate) * up, down_w)
        self.length = at + 1
        return F.linear(self._rms(hidden, self.norm), self.head)
