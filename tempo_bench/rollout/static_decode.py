"""Static-shape decoding for the hf backend (``rollout.decode: static | graphs``): the shapes a CUDA
graph can be captured over, and no host synchronisation per token.

Today's loop (``hf.sample``, ``rollout.decode: eager``) grows its KV cache token by token, drops
finished rows as they end and reads every token back to the host to check for EOS: at a 0.6B
model's size on a GPU that is launch and sync overhead at every token (issue 26: 27 ms per decode
step, where engines take about 4). Here, as in nano-vllm:

- the KV cache is preallocated at its full length (prompt + ``max_new_tokens``) for a *bucket* of
  rows (1, 2, 4, 8, then multiples of 16); rows beyond the live ones are padding;
- finished rows ride along until the live rows fit the next smaller bucket, and only then is the
  batch compacted into a cache of that size, so a bucket's step always has the same shapes;
- tokens and log-probabilities stay on the device; the host looks at the EOS flags once every
  ``CHECK_EVERY`` tokens (to stop, or to compact), and a row's response is cut after its first EOS
  at the end;
- the step is the model's own forward over transformers' ``StaticLayer`` cache, whose attention
  spans the whole preallocated length (causality masks what is not written yet), so any
  architecture with full attention decodes this way.

``rollout.decode: graphs`` (CUDA only) compiles that step with
``torch.compile(mode="reduce-overhead")``, which captures a CUDA graph per bucket; the sampling
copy's weights are updated in place (``hf._load_weights``), so captured graphs stay valid across
policy updates. It is off by default until a GPU run has shown it gives the static path's tokens.

Noise: each row's uniform draws are indexed by (row, token), so a row's tokens do not depend on
which bucket or batch row it rode in. With per-question seeds (``rollout.seeding=question``) they
are the draws the eager loop uses, and the tokens are the eager loop's (tests/test_rollout.py);
with ``seeding=step`` this path draws a [rows, max_new_tokens] block from the step's generator up
front, a different stream from the eager loop's per-token draws (same distribution).
"""

from __future__ import annotations

import torch

CHECK_EVERY = 8  # tokens between the host's looks at the EOS flags


def bucket(rows: int) -> int:
    """The batch size a step runs at for ``rows`` live rows: 1, 2, 4, 8, then multiples of 16."""
    for size in (1, 2, 4, 8):
        if rows <= size:
            return size
    return -(-rows // 16) * 16


def smaller_bucket(size: int) -> int:
    """The bucket a batch of ``size`` rows moves down to next (0 below 1)."""
    return size // 2 if size <= 16 else size - 16


def available() -> bool:
    """Whether this transformers has the static cache layer this path builds on (transformers 5)."""
    try:
        from transformers.cache_utils import StaticLayer  # noqa: F401
    except ImportError:
        return False
    return True


class StaticSteps:
    """The model's own decode step over a static KV cache of ``size`` rows and ``capacity`` positions."""

    def __init__(self, forward, cache_kw: str, layers: list[tuple[torch.Tensor, torch.Tensor]],
                 attention: torch.Tensor, length: int, capacity: int, size: int):
        """``layers``: each layer's (keys, values) [R, kv heads, >= length, head_dim] of the R live
        rows, the first ``length`` positions written; ``attention`` [R, length]: 0 on left padding."""
        from transformers.cache_utils import Cache, StaticLayer

        rows = attention.shape[0]
        self.forward, self.cache_kw, self.capacity = forward, cache_kw, capacity
        self.cache = Cache(layers=[StaticLayer(capacity) for _ in layers])
        for layer, (keys, values) in zip(self.cache.layers, layers):
            layer.lazy_initialization(keys.new_empty(size, keys.shape[1], 1, keys.shape[-1]),
                                      values.new_empty(size, values.shape[1], 1, values.shape[-1]))
            layer.keys[:rows, :, :length] = keys[:, :, :length]
            layer.values[:rows, :, :length] = values[:, :, :length]
            layer.cumulative_length.fill_(length)
        # padding rows attend to everything (zeros): no row is masked whole, which would give NaN;
        # positions past the prompt are open too, and causality hides those not yet written
        self.mask = torch.ones(size, capacity, dtype=torch.long, device=attention.device)
        self.mask[:rows, :length] = attention

    def select(self, index: torch.Tensor, size: int) -> "StaticSteps":
        """The steps of the rows at ``index`` in a cache of ``size`` rows (a smaller bucket)."""
        layers = [(layer.keys[index], layer.values[index]) for layer in self.cache.layers]
        length = int(self.cache.layers[0].cumulative_length)
        return StaticSteps(self.forward, self.cache_kw, layers, self.mask[index, :length], length, self.capacity, size)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits [size, V] after feeding ``tokens`` [size] at their RoPE ``positions`` [size]."""
        out = self.forward(input_ids=tokens[:, None], attention_mask=self.mask, position_ids=positions[:, None],
                           use_cache=True, **{self.cache_kw: self.cache})
        return out.logits[:, -1]


def _padded(values: torch.Tensor, size: int) -> torch.Tensor:
    """``values`` [R, ...] with rows R..size-1 copies of row 0 (padding rows compute something finite)."""
    if values.shape[0] == size:
        return values
    return torch.cat([values, values[:1].expand(size - values.shape[0], *values.shape[1:])])


def decode(forward, cache_kw: str, layers, attention: torch.Tensor, logits: torch.Tensor, last_position: torch.Tensor,
           sampling, eos_id: int, uniforms: torch.Tensor | None, next_tokens) -> list[tuple[list, list, bool]]:
    """Sample up to ``sampling.max_new_tokens`` tokens for R rows after a prefill, stepping with
    ``forward`` (the model, or its compiled step) and its cache keyword ``cache_kw``; ``layers`` each
    layer's (keys, values) [R, kv heads, L, head_dim]; ``attention`` [R, L]; ``logits`` [R, V] of
    the last prompt position; ``last_position`` [R] its RoPE position; ``uniforms`` [R, T] or
    None (greedy, or drawn here); ``next_tokens(logits, sampling, draws)`` the sampling rule.
    Returns (token ids, log-probs, finished) per row, the EOS included where a row ended."""
    rows, steps_max = logits.shape[0], sampling.max_new_tokens
    device = logits.device
    if uniforms is None and not sampling.greedy:
        uniforms = torch.rand(rows, steps_max)
    if uniforms is not None:  # a dummy last row for padding rows
        uniforms = torch.cat([uniforms, uniforms.new_zeros(1, steps_max)]).to(device)
    tokens = torch.zeros(rows + 1, steps_max, dtype=torch.long, device=device)
    logps = torch.zeros(rows + 1, steps_max, dtype=torch.float32, device=device)
    ended = torch.zeros(rows + 1, dtype=torch.bool, device=device)
    size = bucket(rows)
    step_fn = StaticSteps(forward, cache_kw, layers, attention, attention.shape[1], attention.shape[1] + steps_max, size)
    index = torch.cat([torch.arange(rows, device=device), torch.full((size - rows,), rows, device=device)])
    logits, position = _padded(logits, size), _padded(last_position, size)
    done = 0
    for step in range(steps_max):
        draws = None if uniforms is None else uniforms[index, step]
        chosen, chosen_logp = next_tokens(logits, sampling, draws)
        tokens[index, step], logps[index, step] = chosen, chosen_logp.float()
        ended[index] |= chosen == eos_id
        done = step + 1
        if step == steps_max - 1:
            break
        if done % CHECK_EVERY == 0:  # the host's look: stop, or move to a smaller bucket
            live = (~ended[:rows]).nonzero().squeeze(1)
            if live.numel() == 0:
                break
            if bucket(live.numel()) < size:
                keep = (index[:, None] == live[None, :]).float().argmax(0)  # batch rows of the live rows
                size = bucket(live.numel())
                step_fn = step_fn.select(_padded(keep, size), size)
                index = torch.cat([live, torch.full((size - live.numel(),), rows, device=device)])
                chosen, position = _padded(chosen[keep], size), _padded(position[keep], size)
        position = position + 1
        logits = step_fn(chosen, position)
    return _responses(tokens[:rows, :done].cpu(), logps[:rows, :done].cpu(), eos_id)


def _responses(tokens: torch.Tensor, logps: torch.Tensor, eos_id: int) -> list[tuple[list, list, bool]]:
    """Each row's tokens up to and including its first EOS (all of them where it has none)."""
    out = []
    for row_tokens, row_logps in zip(tokens.tolist(), logps.tolist()):
        finished = eos_id in row_tokens
        end = row_tokens.index(eos_id) + 1 if finished else len(row_tokens)
        out.append((row_tokens[:end], row_logps[:end], finished))
    return out
