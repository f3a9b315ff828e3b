"""A decode step for Llama-architecture models (the toy's) in a few dozen operators per token.

A 64-wide toy model's decode time is per-operator overhead, not arithmetic (BENCHMARKS.md: about
100 small operators per token through transformers' forward, its mask building, cache objects and
output classes). This step computes the same function with the weights fused once per policy
version (FusedWeights): one matmul per layer for q, k, their RoPE rotations and v, one for gate
and up, the attention scale folded into q, rotary tables indexed by position, the KV cache in
preallocated tensors, grouped-query attention without copying the cache, residual adds inside
``addmm``, and attention as two batched matmuls around a softmax with an additive mask (for one
query over a short cache, 3x faster on CPU than ``scaled_dot_product_attention`` with a boolean
mask, measured). It mirrors transformers' Llama code (RMSNorm in float32, default RoPE, SiLU MLP,
tied or untied head): it draws the same tokens as transformers' own step for a seed, and the
log-probabilities of its samples are checked against a teacher-forced forward pass of the same
model (tests/test_rollout.py). Architectures with anything else (biases, scaled RoPE, q/k norms, sliding
windows) take the general path in ``hf.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PROJECTIONS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
               "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def supports(model) -> bool:
    """Whether ``model`` (a plain causal LM on the CPU, not a peft wrapper) is a Llama this step
    reproduces. CPU only: the step exists for per-operator overhead, which a CPU pays per token,
    and its fused weights are copies (q, k, their rotations and v; gate and up), which on a GPU
    would be memory the plan does not count and that nobody measured."""
    from transformers import LlamaForCausalLM

    config = model.config
    rope = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    devices = {p.device for p in model.parameters()}
    return (type(model).forward is LlamaForCausalLM.forward and getattr(config, "model_type", None) == "llama"
            and not config.attention_bias and not getattr(config, "mlp_bias", False)
            and config.hidden_act == "silu" and getattr(config, "pretraining_tp", 1) == 1
            and rope.get("rope_type", "default") == "default"
            and devices == {torch.device("cpu")}
            and len(set(getattr(model, "hf_device_map", {}).values())) <= 1
            and all(type(layer.get_submodule(name)) is torch.nn.Linear
                    for layer in model.model.layers for name in PROJECTIONS))


class FusedWeights:
    """A model's weights as the step reads them, and its RoPE tables. Copies, rebuilt after the
    model's weights change:

    - one projection matrix per layer with rows [q; k; rot(q); rot(k); v], where rot(W) is
      rotate_half applied to W's output rows: RoPE is x * cos + rotate_half(x) * sin and
      rotate_half is a signed permutation, so the projection computes x and rotate_half(x) at
      once and RoPE is three elementwise operators for q and k together (was twelve);
    - the q rows scaled by head_dim ** -0.5, so attention scores need no scaling operator (exact
      when head_dim is a power of 4, the toy's 16; otherwise within float rounding);
    - gate and up in one matrix."""

    def __init__(self, model):
        config, inner = model.config, model.model
        self.eps, self.heads, self.kv_heads = config.rms_norm_eps, config.num_attention_heads, config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.heads
        self.embed = inner.embed_tokens.weight
        self.layers = [(
            layer.input_layernorm.weight,
            self._projection(layer.self_attn),
            layer.self_attn.o_proj.weight,
            layer.post_attention_layernorm.weight,
            torch.cat([layer.mlp.gate_proj.weight, layer.mlp.up_proj.weight]),
            layer.mlp.down_proj.weight,
        ) for layer in inner.layers[: config.num_hidden_layers]]
        self.norm, self.head = inner.norm.weight, model.lm_head.weight
        self.inv_freq, self.rope_scaling = inner.rotary_emb.inv_freq.float(), inner.rotary_emb.attention_scaling
        self.cos = self.sin = self.embed.new_empty(0, self.head_dim)

    def _rotated(self, weight: torch.Tensor) -> torch.Tensor:
        """Rows of ``weight`` [heads * head_dim, D] such that x @ result.T = rotate_half(x @ weight.T)
        per head: rotate_half(y) = cat(-y[half:], y[:half])."""
        per_head = weight.view(-1, self.head_dim, weight.shape[-1])
        half = self.head_dim // 2
        return torch.cat([-per_head[:, half:], per_head[:, :half]], 1).reshape(weight.shape)

    def _projection(self, attention) -> torch.Tensor:
        q = attention.q_proj.weight * self.head_dim ** -0.5
        k = attention.k_proj.weight
        return torch.cat([q, k, self._rotated(q), self._rotated(k), attention.v_proj.weight])

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
        if x.dtype == torch.float32:  # one call (six kernels on CPU), equal to the expression below in float32
            return F.rms_norm(x, x.shape[-1:], weight, self.eps)
        x32 = x.float()
        return weight * (x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    @torch.no_grad()
    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits [R, V] after feeding ``tokens`` [R] at ``positions`` [R]."""
        rows, at, dim = tokens.shape[0], self.length, self.head_dim
        heads, kv_heads = self.heads, self.kv_heads
        cos = F.embedding(positions, self.cos)[:, None]  # [R, 1, hd]
        sin = F.embedding(positions, self.sin)[:, None]
        self.bias[:, 0, 0, at] = 0.0
        bias, qk = self.bias[..., : at + 1], (heads + kv_heads) * dim
        hidden = F.embedding(tokens, self.embed)  # [R, D]
        for (norm_in, projection, o_w, norm_post, gate_up_w, down_w), keys, values in zip(self.layers, self.keys, self.values):
            out = F.linear(self._rms(hidden, norm_in), projection)  # [R, q + k, rotated q + k, v]
            roped = out[:, :qk].view(rows, -1, dim) * cos + out[:, qk: 2 * qk].view(rows, -1, dim) * sin
            keys[..., at] = roped[:, heads:]
            values[:, :, at] = out[:, 2 * qk:].view(rows, kv_heads, dim)
            # grouped-query attention without copying the cache: the query heads a key/value head
            # serves are one [repeat, hd] block (transformers' repeat_kv order)
            q = roped[:, :heads].reshape(rows, kv_heads, heads // kv_heads, dim)
            scores = torch.matmul(q, keys[..., : at + 1]) + bias  # [R, kv heads, repeat, at + 1]
            probs = torch.softmax(scores.float(), -1).to(q.dtype)
            attended = torch.matmul(probs, values[:, :, : at + 1])  # [R, kv heads, repeat, hd]
            hidden = torch.addmm(hidden, attended.reshape(rows, heads * dim), o_w.t())
            gate, up = F.linear(self._rms(hidden, norm_post), gate_up_w).chunk(2, -1)
            hidden = torch.addmm(hidden, F.silu(gate) * up, down_w.t())
        self.length = at + 1
        return F.linear(self._rms(hidden, self.norm), self.head)
