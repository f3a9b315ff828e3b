"""Rollouts with transformers models on CPU or GPU: a sampling loop of our own over the model's
KV cache, because ``generate`` spends compute where a TTT step does not need it.

- Prefill once per prompt: the n samples of a prompt share its prefix, so the prompt is encoded once
  and its cache repeated n times.
- Finished rows leave the batch: a row that emitted EOS is dropped from the cache and from every
  later forward pass (``generate`` keeps computing it until the longest row ends).
- A fused decode step for Llama models (``llama_decode``: fused projections, RoPE tables, a
  preallocated cache; 1.2-1.5x faster per token on the toy, the same tokens for a seed); other
  architectures use the model's own forward for each token.
- Static shapes (``rollout.decode: static``, ``graphs`` to capture CUDA graphs over them): a
  preallocated cache in batch-size buckets and no host sync per token (``static_decode``).
- Merged weights (``merge_lora``): sampling runs on a copy of the base model whose LoRA-targeted
  weights are W + scale * B A, refreshed by ``sync_weights`` after each policy update: one matmul
  per layer instead of three. Costs a second copy of the base model's weights.
- A policy sharded over ranks (FSDP, ``train.sharding: fsdp``) cannot sample: every rank samples
  from a plain copy whose weights are gathered from the shards at every ``sync_weights`` (a
  collective, so eagerly, on every rank, never inside a rank-0-only evaluation).

Samples follow the policy's distribution at ``temperature`` (with ``top_p`` filtering when below
1); ``logprobs`` are log-softmax(logits / temperature) of the sampled tokens (greedy: temperature 1),
the quantity the trainer recomputes by teacher forcing.
"""

from __future__ import annotations

import copy
import functools

import torch

from tempo_bench.core.errors import ConfigError
from tempo_bench.policy import sharding
from tempo_bench.policy.model import forward_takes, merged_lora_weights
from tempo_bench.rollout import llama_decode, static_decode
from tempo_bench.rollout.base import Generation, RolloutBackend, SamplingParams


class HFBackend(RolloutBackend):
    def __init__(self, model, tokenizer, max_batch_rows: int = 1024, merge_lora: bool = True,
                 fused_decode: bool = True, sampling_dtype: torch.dtype | None = None, decode: str = "eager",
                 reuse_cache: bool | None = None):
        self.model = model
        self.decode = decode  # eager | static | graphs (rollout.decode)
        self._compiled = {}  # graphs: the compiled step of each sampler module (its weights change in place)
        # one static cache kept between calls (default: with captured graphs, which read its addresses)
        self._pool = static_decode.CachePool() if (decode == "graphs" if reuse_cache is None else reuse_cache) else None
        self.fused_decode = fused_decode  # llama_decode's step where it applies (False: a check, a bench)
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows
        self.merge_lora = merge_lora and hasattr(model, "get_base_model")
        self._merged = None  # the inference copy, rebuilt lazily after sync_weights
        self._stale = True
        self._fused = None  # the fused decode step's weights (llama_decode), rebuilt after sync_weights
        self._gathered = sharding.sampling_copy(model, sampling_dtype) if sharding.is_sharded(model) else None
        if self._gathered is not None:
            self.sync_weights()

    @classmethod
    def create(cls, config, policy, tokenizer, out_dir, longest_prompt: int | None = None) -> "HFBackend":
        return cls(policy, tokenizer, merge_lora=config.rollout.merge_lora, fused_decode=config.rollout.fused_decode,
                   sampling_dtype=getattr(torch, config.model.dtype), decode=config.rollout.decode)

    @classmethod
    def check(cls, config, longest_prompt: int) -> None:
        from tempo_bench.policy.model import resolve_device

        decode = config.rollout.decode
        if decode != "eager" and not static_decode.available():
            raise ConfigError(f"rollout.decode={decode} needs transformers' static cache layers (transformers 5): "
                              "upgrade transformers, or set rollout.decode=eager")
        if decode == "graphs" and not resolve_device(config.model.device).startswith("cuda"):
            raise ConfigError("rollout.decode=graphs captures CUDA graphs and this model is not on a GPU: set "
                              "rollout.decode=static (the same static shapes, without capture) or eager")
        if decode == "eager":
            return
        if config.model.attn_implementation == "flash_attention_2":
            # its single-query path applies no causality, so the cache's unwritten positions would count
            raise ConfigError(f"rollout.decode={decode} attends over a preallocated cache, which "
                              "model.attn_implementation=flash_attention_2 would not mask: use sdpa, or rollout.decode=eager")
        from transformers import AutoConfig

        from tempo_bench.policy.model import resolve_model_path

        if not _full_attention_only(AutoConfig.from_pretrained(resolve_model_path(config.model.path))):
            raise ConfigError(f"rollout.decode={decode} needs a model whose layers all use full attention (model.path="
                              f"{config.model.path!r} has sliding-window or linear-attention layers): set rollout.decode=eager")

    def _step_forward(self, model):
        """What a static decode step calls: the model, or (graphs) its compiled forward, built once
        per sampling module, whose weights are then only ever updated in place."""
        if self.decode != "graphs":
            return model
        if id(model) not in self._compiled:
            # a graph per (bucket, cache length): more than dynamo's default 8 recompilations
            import torch._dynamo.config as dynamo

            limit = "recompile_limit" if hasattr(dynamo, "recompile_limit") else "cache_size_limit"
            setattr(dynamo, limit, max(getattr(dynamo, limit), 256))
            self._compiled[id(model)] = torch.compile(model, mode="reduce-overhead", dynamic=False)
        return self._compiled[id(model)]

    def sync_weights(self) -> None:
        self._stale = True
        self._fused = None
        if self._gathered is not None:  # a collective: now, while every rank is here
            _load_weights(self._gathered, sharding.full_weights(self.model))

    def _fused_weights(self, model):
        """The fused Llama step's weights for ``model`` where it applies and is wanted (built once
        per policy version, not per call), else None: the model's own forward decodes."""
        if not self.fused_decode or not llama_decode.supports(model):
            return None
        if self._fused is None:
            self._fused = llama_decode.FusedWeights(model)
        return self._fused

    def _sampler(self):
        """The module to sample from: the training model itself, its merged copy, or the copy
        gathered from its shards."""
        if self._gathered is not None:
            return self._gathered
        if not self.merge_lora:
            return self.model

        if self._merged is None:
            self._merged = copy.deepcopy(self.model.get_base_model())
            for module in self._merged.modules():  # a plain model: LoRA layers -> their base layers
                for name, child in list(module.named_children()):
                    if hasattr(child, "get_base_layer"):
                        setattr(module, name, child.get_base_layer())
            self._merged.requires_grad_(False).eval()
        if self._stale:
            _load_weights(self._merged, merged_lora_weights(self.model))
            self._stale = False
        return self._merged

    @torch.no_grad()
    def generate(self, prompts: list[str], sampling: SamplingParams) -> Generation:
        tok = self.tokenizer
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        n = 1 if sampling.greedy else sampling.n
        out = Generation(n, prompt_ids, [], [], [], [])
        model = self._sampler()
        fused = self._fused_weights(model) if self.decode == "eager" else None
        forward = None if self.decode == "eager" else self._step_forward(model)
        was_training = model.training
        model.eval()
        try:
            per_call = max(1, self.max_batch_rows // n)
            for start in range(0, len(prompts), per_call):
                uniforms = None if sampling.seeds is None or sampling.greedy else seeded_uniforms(
                    sampling.seeds[start:start + per_call], n, sampling.max_new_tokens)
                for ids, logps, finished in sample(model, prompt_ids[start:start + per_call], n, sampling,
                                                   tok.eos_token_id, tok.pad_token_id, uniforms, fused, forward,
                                                   self._pool):
                    out.token_ids.append(ids)
                    out.logprobs.append(logps)
                    out.texts.append(tok.decode(ids, skip_special_tokens=True))
                    out.finished.append(finished)
        finally:
            model.train(was_training)
        return out


@torch.no_grad()
def _load_weights(copy: torch.nn.Module, weights) -> None:
    """Copy (name, tensor) pairs into the same-named parameters of a sampling copy, in place."""
    params = dict(copy.named_parameters())
    for name, weight in weights:
        params[name].copy_(weight)


def _cache_keyword(model) -> str:
    """transformers 5 names the KV cache argument ``cache``; 4.x ``past_key_values``."""
    return "cache" if forward_takes(model, "cache") else "past_key_values"


@functools.cache
def _growing_layer_class():
    """The cache layer class (built once), or None where this transformers version has no
    per-layer cache API."""
    try:
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return None

    class GrowingLayer(DynamicLayer):
        """A DynamicLayer that writes new keys/values into preallocated room (doubling when full)
        instead of concatenating the whole cache at every token."""

        def update(self, key_states, value_states, *args, **kwargs):
            if not self.is_initialized:
                self.lazy_initialization(key_states, value_states)
                self.length, self.room_k, self.room_v = 0, None, None
            end = self.length + key_states.shape[-2]
            if self.room_k is None or end > self.room_k.shape[-2]:
                room = max(end, 2 * (0 if self.room_k is None else self.room_k.shape[-2]), 32)
                grown_k = key_states.new_empty(*key_states.shape[:2], room, key_states.shape[-1])
                grown_v = value_states.new_empty(*value_states.shape[:2], room, value_states.shape[-1])
                if self.length:
                    grown_k[..., : self.length, :] = self.room_k[..., : self.length, :]
                    grown_v[..., : self.length, :] = self.room_v[..., : self.length, :]
                self.room_k, self.room_v = grown_k, grown_v
            self.room_k[..., self.length:end, :] = key_states
            self.room_v[..., self.length:end, :] = value_states
            self.length = end
            return self._views()

        def _views(self):
            self.keys, self.values = self.room_k[..., : self.length, :], self.room_v[..., : self.length, :]
            return self.keys, self.values

        def batch_repeat_interleave(self, repeats: int) -> None:
            if self.is_initialized and self.length:
                self.room_k = self.room_k.repeat_interleave(repeats, dim=0)
                self.room_v = self.room_v.repeat_interleave(repeats, dim=0)
                self._views()

        def batch_select_indices(self, indices: torch.Tensor) -> None:
            if self.is_initialized and self.length:
                self.room_k, self.room_v = self.room_k[indices], self.room_v[indices]
                self._views()

    return GrowingLayer


def _text_config(model_config):
    """The decoder's config (a multimodal config holds it as its text config)."""
    return model_config.get_text_config(decoder=True) if hasattr(model_config, "get_text_config") else model_config


def _full_attention_only(model_config) -> bool:
    """Whether every layer of a model with this config attends to the whole sequence."""
    return all(t == "full_attention" for t in getattr(_text_config(model_config), "layer_types", None) or [])


def _growing_cache(model):
    """A KV cache of GrowingLayers (measured: concatenation was a third of decode time on the
    toy), or None where this transformers version or model does not allow it: the model then
    makes its own cache."""
    layer = _growing_layer_class()
    if layer is None:
        return None
    from transformers.cache_utils import Cache

    if not _full_attention_only(model.config):
        return None  # sliding-window or linear-attention layers keep their own cache types
    try:
        return Cache(layers=[layer() for _ in range(_text_config(model.config).num_hidden_layers)])
    except TypeError:
        return None


def seeded_uniforms(seeds: tuple[int, ...], n: int, max_new_tokens: int) -> torch.Tensor:
    """The uniform draws of inverse-CDF sampling for prompts with their own seeds: [P * n, T],
    row i * n + j for sample j of prompt i, column t for its t-th token. Drawn up front, one
    generator per prompt: a prompt's samples then depend on its seed alone."""
    return torch.cat([torch.rand(n, max_new_tokens, generator=torch.Generator().manual_seed(seed)) for seed in seeds])


class _TransformersSteps:
    """The general decode step: the model's own forward over its cache (any architecture)."""

    def __init__(self, model, cache, cache_kw: str, attention: torch.Tensor, padded: bool):
        self.model, self.cache, self.cache_kw = model, cache, cache_kw
        self.attention, self.padded = attention, padded

    def select(self, index: torch.Tensor) -> None:
        self.cache.batch_select_indices(index)
        self.attention = self.attention[index]

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        if self.padded:
            self.attention = torch.cat([self.attention, self.attention.new_ones(self.attention.shape[0], 1)], 1)
        out = self.model(input_ids=tokens[:, None], attention_mask=self.attention if self.padded else None,
                         position_ids=positions[:, None], use_cache=True, **{self.cache_kw: self.cache})
        return out.logits[:, -1]


def _taken_layers(cache):
    """Each layer's (keys, values) of a prefill's cache, each freed once the consumer has read it."""
    for layer in cache.layers:
        yield layer.keys, layer.values
        layer.room_k = layer.room_v = layer.keys = layer.values = None


def _decode_steps(model, cache, cache_kw: str, attention: torch.Tensor, padded: bool, max_positions: int,
                  new_tokens: int, fused=None):
    """The per-token step: the fused Llama step over ``fused`` weights (llama_decode.FusedWeights)
    where given, else the model's own forward."""
    if fused is not None and hasattr(cache, "layers"):
        steps = llama_decode.LlamaDecoder(fused, max_positions)
        steps.start(cache, attention, new_tokens)
        return steps
    return _TransformersSteps(model, cache, cache_kw, attention, padded)


def _next_tokens(logits: torch.Tensor, sampling: SamplingParams,
                 draws: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [R], their log-probabilities [R]) from last-position logits [R, V]; ``draws`` [R]:
    the rows' uniform draws (default: from the global generator)."""
    if sampling.greedy:
        logp = torch.log_softmax(logits.float(), -1)
        tokens = logp.argmax(-1)
        return tokens, logp.gather(1, tokens[:, None]).squeeze(1)
    logp = torch.log_softmax(logits.float() / sampling.temperature, -1)
    probs = logp.exp()
    if sampling.top_p < 1.0:  # nucleus: keep the smallest set of tokens with mass >= top_p
        sorted_p, order = probs.sort(-1, descending=True)
        drop = sorted_p.cumsum(-1) - sorted_p >= sampling.top_p
        probs = probs.scatter(1, order, sorted_p.masked_fill(drop, 0.0))
    # inverse-CDF sampling: one uniform draw per row (cheaper than torch.multinomial here)
    cdf = probs.cumsum(-1)
    uniform = torch.rand(cdf.shape[0], 1, device=cdf.device) if draws is None else draws.to(cdf.device)[:, None]
    draw = uniform * cdf[:, -1:]
    tokens = torch.searchsorted(cdf, draw, right=True).squeeze(1).clamp(max=cdf.shape[1] - 1)
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)


def sample(model, prompt_ids: list[list[int]], n: int, sampling: SamplingParams, eos_id: int, pad_id: int,
           uniforms: torch.Tensor | None = None, fused=None, static_forward=None, pool=None):
    """n samples for each prompt, prompt-major: a list of (token ids, log-probs, finished), the
    EOS included when a row ended. ``uniforms`` [P * n, T]: each row's draws (seeded_uniforms);
    ``fused``: the model's weights for the fused Llama step (None: the model's own forward);
    ``static_forward``: decode with static shapes (static_decode) stepping with it, in ``pool``'s
    cache where given (captured graphs), else in one of the call's own."""
    device = next(model.parameters()).device
    cache_kw = _cache_keyword(model)
    width = max(len(p) for p in prompt_ids)
    input_ids = torch.full((len(prompt_ids), width), pad_id, dtype=torch.long)
    attention = torch.zeros_like(input_ids)
    for row, ids in enumerate(prompt_ids):  # left padding: every prompt ends where sampling starts
        input_ids[row, width - len(ids):] = torch.tensor(ids)
        attention[row, width - len(ids):] = 1
    input_ids, attention = input_ids.to(device), attention.to(device)
    positions = (attention.cumsum(1) - 1).clamp(min=0)
    # prompts of one length need no mask at all: the model then skips building one every step
    padded = bool((attention == 0).any())
    cache = _growing_cache(model)
    prefill = model(input_ids=input_ids, attention_mask=attention if padded else None, position_ids=positions,
                    use_cache=True, **({cache_kw: cache} if cache is not None else {}))
    cache = prefill.cache if hasattr(prefill, "cache") and prefill.cache is not None else prefill.past_key_values
    if n > 1:  # one prefill per prompt, shared by its n samples
        cache.batch_repeat_interleave(n)
    logits = prefill.logits[:, -1].repeat_interleave(n, 0)
    attention = attention.repeat_interleave(n, 0)
    last_position = positions[:, -1].repeat_interleave(n, 0)
    if static_forward is not None:
        if _growing_layer_class() is None or not isinstance(cache.layers[0], _growing_layer_class()):  # check() refuses these
            raise ConfigError("rollout.decode=static needs a model whose layers all use full attention: set "
                              "rollout.decode=eager")
        shapes = [(layer.keys.shape[1], layer.keys.shape[-1], layer.values.shape[-1]) for layer in cache.layers]
        dtype = cache.layers[0].keys.dtype
        del prefill  # its logits and cache: the static cache is filled layer by layer, freeing each
        return static_decode.decode(static_forward, cache_kw, shapes, dtype, _taken_layers(cache), attention, logits,
                                    last_position, sampling, eos_id, uniforms, _next_tokens, pool)
    step_fn = _decode_steps(model, cache, cache_kw, attention, padded, width + sampling.max_new_tokens,
                            sampling.max_new_tokens, fused)
    del prefill, cache  # the step holds what it needs (the fused step: its own copy of the cache)
    rows = len(prompt_ids) * n
    tokens: list[list[int]] = [[] for _ in range(rows)]
    logps: list[list[float]] = [[] for _ in range(rows)]
    finished = [False] * rows
    active = torch.arange(rows)  # which original row each batch row is
    alive = torch.ones(rows, dtype=torch.bool)  # batch rows still sampling
    for step in range(sampling.max_new_tokens):
        chosen, chosen_logp = _next_tokens(logits, sampling, None if uniforms is None else uniforms[active, step])
        ended = (chosen == eos_id).cpu() & alive
        for row, token, lp in zip(active[alive].tolist(), chosen[alive.to(chosen.device)].tolist(),
                                  chosen_logp[alive.to(chosen.device)].tolist()):
            tokens[row].append(token)
            logps[row].append(lp)
        for row in active[ended].tolist():
            finished[row] = True
        alive &= ~ended
        if step == sampling.max_new_tokens - 1 or not alive.any():
            break
        # finished rows leave the batch and the cache, in batches of at least an eighth of it
        # (each removal copies the cache)
        if (~alive).sum() * 8 >= len(alive):
            index = alive.nonzero().squeeze(1)
            step_fn.select(index.to(device))
            active, alive, chosen = active[index], alive[index], chosen[index.to(device)]
            last_position = last_position[index.to(device)]
        last_position = last_position + 1
        logits = step_fn(chosen, last_position)
    return list(zip(tokens, logps, finished))
