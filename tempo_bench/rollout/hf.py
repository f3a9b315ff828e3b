"""Rollouts with transformers models on CPU or GPU: a sampling loop of our own over the model's
KV cache, because ``generate`` spends compute where a TTT step does not need it.

- Prefill once per prompt: the n samples of a prompt share its prefix, so the prompt is encoded once
  and its cache repeated n times.
- Finished rows leave the batch: a row that emitted EOS is dropped from the cache and from every
  later forward pass (``generate`` keeps computing it until the longest row ends).
- Merged weights (``merge_lora``): sampling runs on a copy of the base model whose LoRA-targeted
  weights are W + scale * B A, refreshed by ``sync_weights`` after each policy update: one matmul
  per layer instead of three. Costs a second copy of the base model's weights.

Samples follow the policy's distribution at ``temperature`` (with ``top_p`` filtering when below
1); ``logprobs`` are log-softmax(logits / temperature) of the sampled tokens (greedy: temperature 1),
the quantity the trainer recomputes by teacher forcing.
"""

from __future__ import annotations

import copy
import inspect

import torch

from tempo_bench.rollout.base import Generation, RolloutBackend, SamplingParams


class HFBackend(RolloutBackend):
    def __init__(self, model, tokenizer, max_batch_rows: int = 1024, merge_lora: bool = True):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows
        self.merge_lora = merge_lora and hasattr(model, "get_base_model")
        self._merged = None  # the inference copy, rebuilt lazily after sync_weights
        self._stale = True

    @classmethod
    def create(cls, config, policy, tokenizer, out_dir) -> "HFBackend":
        return cls(policy, tokenizer, merge_lora=config.rollout.merge_lora)

    def sync_weights(self) -> None:
        self._stale = True

    def _sampler(self):
        """The module to sample from: the training model itself, or its merged copy."""
        if not self.merge_lora:
            return self.model
        from tempo_bench.policy import merged_lora_weights

        if self._merged is None:
            self._merged = copy.deepcopy(self.model.get_base_model())
            for module in self._merged.modules():  # a plain model: LoRA layers -> their base layers
                for name, child in list(module.named_children()):
                    if hasattr(child, "get_base_layer"):
                        setattr(module, name, child.get_base_layer())
            self._merged.requires_grad_(False).eval()
        if self._stale:
            with torch.no_grad():
                params = dict(self._merged.named_parameters())
                for name, weight in merged_lora_weights(self.model):
                    params[name].copy_(weight)
            self._stale = False
        return self._merged

    @torch.no_grad()
    def generate(self, prompts: list[str], sampling: SamplingParams) -> Generation:
        tok = self.tokenizer
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        n = 1 if sampling.greedy else sampling.n
        out = Generation(n, prompt_ids, [], [], [], [])
        model = self._sampler()
        was_training = model.training
        model.eval()
        try:
            per_call = max(1, self.max_batch_rows // n)
            for start in range(0, len(prompts), per_call):
                for ids, logps, finished in sample(model, prompt_ids[start:start + per_call], n, sampling,
                                                   tok.eos_token_id, tok.pad_token_id):
                    out.token_ids.append(ids)
                    out.logprobs.append(logps)
                    out.texts.append(tok.decode(ids, skip_special_tokens=True))
                    out.finished.append(finished)
        finally:
            model.train(was_training)
        return out


def _cache_keyword(model) -> str:
    """transformers 5 names the KV cache argument ``cache``; 4.x ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _next_tokens(logits: torch.Tensor, sampling: SamplingParams) -> tuple[torch.Tensor, torch.Tensor]:
    """(tokens [R], their log-probabilities [R]) from last-position logits [R, V]."""
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
    tokens = torch.multinomial(probs, 1).squeeze(1)
    return tokens, logp.gather(1, tokens[:, None]).squeeze(1)


def sample(model, prompt_ids: list[list[int]], n: int, sampling: SamplingParams, eos_id: int, pad_id: int):
    """n samples for each prompt, prompt-major: a list of (token ids, log-probs, finished), the
    EOS included when a row ended."""
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
    prefill = model(input_ids=input_ids, attention_mask=attention, position_ids=positions, use_cache=True)
    cache = prefill.cache if hasattr(prefill, "cache") and prefill.cache is not None else prefill.past_key_values
    if n > 1:  # one prefill per prompt, shared by its n samples
        cache.batch_repeat_interleave(n)
    logits = prefill.logits[:, -1].repeat_interleave(n, 0)
    attention = attention.repeat_interleave(n, 0)
    last_position = positions[:, -1].repeat_interleave(n, 0)
    rows = len(prompt_ids) * n
    tokens: list[list[int]] = [[] for _ in range(rows)]
    logps: list[list[float]] = [[] for _ in range(rows)]
    finished = [False] * rows
    active = torch.arange(rows)  # which original row each batch row is
    for step in range(sampling.max_new_tokens):
        chosen, chosen_logp = _next_tokens(logits, sampling)
        for row, token, lp in zip(active.tolist(), chosen.tolist(), chosen_logp.tolist()):
            tokens[row].append(token)
            logps[row].append(lp)
        ended = chosen == eos_id
        for row in active[ended.cpu()].tolist():
            finished[row] = True
        if step == sampling.max_new_tokens - 1:
            break
        keep = ~ended
        if not keep.any():
            break
        if not keep.all():  # finished rows leave the batch and the cache
            index = keep.nonzero().squeeze(1)
            cache.batch_select_indices(index)
            active, chosen = active[keep.cpu()], chosen[index]
            attention, last_position = attention[index], last_position[index]
        attention = torch.cat([attention, attention.new_ones(attention.shape[0], 1)], 1)
        last_position = last_position + 1
        step_out = model(input_ids=chosen[:, None], attention_mask=attention, position_ids=last_position[:, None],
                         use_cache=True, **{cache_kw: cache})
        logits = step_out.logits[:, -1]
    return list(zip(tokens, logps, finished))
