"""Static-shape decoding for the hf backend (``rollout.decode: static | graphs``): the shapes a CUDA
graph can be captured over, and no host synchronisation per token.

Today's loop (``hf.sample``, ``rollout.decode: eager``) grows its KV cache token by token, drops
finished rows as they end and reads every token back to the host to check for EOS: at a 0.6B
model's size on a GPU that is launch and sync overhead at every token (issue 26: 27 ms per decode
step, where engines take about 4). Here, as in nano-vllm:

- the KV cache is preallocated at its full length (prompt + ``max_new_tokens``) for a *bucket* of
  rows (1, 2, 4, 8, then multiples of 16); rows beyond the live ones are padding;
- finished rows ride along until the live rows fit the next smaller bucket, and only then move:
  the live rows go to the front of the same storage, in place, and the step runs on the first
  rows of it, so a bucket's step always has the same shapes and no second cache is made;
- the prefill's cache is freed layer by layer as the static one is filled;
- tokens and log-probabilities stay on the device; the host looks at the EOS flags once every
  ``CHECK_EVERY`` tokens (to stop, or to compact), and a row's response is cut after its first EOS
  at the end;
- the step is the model's own forward over transformers' ``StaticLayer`` cache, whose attention
  spans the whole preallocated length (causality masks what is not written yet), so any
  architecture with full attention decodes this way.

``rollout.decode: graphs`` (CUDA only) compiles that step with
``torch.compile(mode="reduce-overhead")``, which captures a CUDA graph per bucket and cache length.
The backend keeps one cache between calls (``CachePool``: grown to the largest call, its length
rounded up to ``CAPACITY_STEP``), so later calls replay graphs at the same addresses; the sampling
copy's weights are updated in place (``hf._load_weights``), so captured graphs stay valid across
policy updates. It is off by default until a GPU run has shown it gives the static path's tokens.
Attention with ``flash_attention_2`` is refused: its single-query path does not mask the cache's
unwritten positions.

Noise: each row's uniform draws are indexed by (row, token), so a row's tokens do not depend on
which bucket or batch row it rode in. With per-question seeds (``rollout.seeding=question``) they
are the draws the eager loop uses, and the tokens are the eager loop's (tests/test_rollout.py);
with ``seeding=step`` this path draws a [rows, max_new_tokens] block from torch's global CPU
generator (which the loop seeds every step) up front, a different stream from the eager loop's
per-token draws (same distribution).
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


def available() -> bool:
    """Whether this transformers has the static cache layer this path builds on (transformers 5)."""
    try:
        from transformers.cache_utils import StaticLayer  # noqa: F401
    except ImportError:
        return False
    return True


# graphs: cache lengths rounded up to this, so that calls of similar lengths share captured graphs
CAPACITY_STEP = 256


def graph_capacity(length: int) -> int:
    """The length of the cache kept for captured graphs that holds ``length`` positions."""
    return -(-length // CAPACITY_STEP) * CAPACITY_STEP


class StaticKV:
    """A static KV cache and its attention mask for up to ``rows`` rows and ``capacity`` positions:
    per layer keys and values [rows, kv heads, capacity, head_dim] and the written length; a batch
    of b rows uses rows [:b] of the same storage (views at one address: a graph captured for b
    replays on them, call after call). Finished rows leave by moving the live ones to the front in
    place, so a decode never holds a second cache."""

    def __init__(self, shapes: list[tuple[int, int, int]], rows: int, capacity: int, dtype, device, graphs: bool):
        self.shapes, self.rows, self.capacity, self.dtype, self.device = shapes, rows, capacity, dtype, device
        self.keys = [torch.zeros(rows, heads, capacity, k_dim, dtype=dtype, device=device) for heads, k_dim, _ in shapes]
        self.values = [torch.zeros(rows, heads, capacity, v_dim, dtype=dtype, device=device) for heads, _, v_dim in shapes]
        self.lengths = [torch.zeros((), dtype=torch.long, device=device) for _ in shapes]
        self.mask = torch.ones(rows, capacity, dtype=torch.long, device=device)
        if graphs:  # the addresses a captured graph reads stay these
            for tensor in (*self.keys, *self.values, *self.lengths, self.mask):
                torch._dynamo.mark_static_address(tensor)

    def fits(self, shapes, rows: int, capacity: int, dtype, device) -> bool:
        return (shapes == self.shapes and rows <= self.rows and capacity <= self.capacity and dtype == self.dtype
                and torch.device(device) == torch.device(self.device))

    def fill(self, layers, attention: torch.Tensor) -> None:
        """Write a prefill: ``layers`` yields each layer's (keys, values) [R, kv heads, >= L, head_dim]
        (the prefill's cache may free each layer once it is read); ``attention`` [R, L], 0 on left
        padding. Every other position and row is open: causality hides what is not written yet, and
        padding rows attend to something (a row masked whole would give NaN)."""
        rows, length = attention.shape
        for keys, values, written, (k, v) in zip(self.keys, self.values, self.lengths, layers):
            keys[:rows, :, :length] = k[:, :, :length]
            values[:rows, :, :length] = v[:, :, :length]
            written.fill_(length)
        self.mask.fill_(1)
        self.mask[:rows, :length] = attention

    def move(self, keep: torch.Tensor) -> None:
        """Rows ``keep`` (batch rows, ascending) to the front, in place."""
        length = int(self.lengths[0])
        for tensor in (*self.keys, *self.values):
            tensor[: len(keep), :, :length] = tensor[keep, :, :length]
        self.mask[: len(keep)] = self.mask[keep]

    def cache(self, size: int):
        """transformers' static cache over rows [:size] (StaticLayer objects on views of this storage)."""
        from transformers.cache_utils import Cache, StaticLayer

        layers = []
        for keys, values, written in zip(self.keys, self.values, self.lengths):
            layer = StaticLayer(self.capacity)
            layer.keys, layer.values, layer.cumulative_length = keys[:size], values[:size], written
            layer.device, layer.batch_size, layer.num_heads = keys.device, size, keys.shape[1]
            layer.k_head_dim, layer.v_head_dim, layer.is_initialized = keys.shape[-1], values.shape[-1], True
            layers.append(layer)
        return Cache(layers=layers)


class StaticSteps:
    """The model's own decode step over rows [:size] of a StaticKV."""

    def __init__(self, forward, cache_kw: str, kv: StaticKV, size: int):
        self.forward, self.cache_kw, self.kv, self.size = forward, cache_kw, kv, size
        self.cache = kv.cache(size)

    def __call__(self, tokens: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Logits [size, V] after feeding ``tokens`` [size] at their RoPE ``positions`` [size]."""
        out = self.forward(input_ids=tokens[:, None], attention_mask=self.kv.mask[: self.size],
                           position_ids=positions[:, None], use_cache=True, **{self.cache_kw: self.cache})
        return out.logits[:, -1]


class CachePool:
    """The static cache a backend keeps between calls for captured graphs (rollout.decode=graphs):
    one, grown to the largest call seen (rows to a bucket, length to CAPACITY_STEP)."""

    def __init__(self):
        self.kv: StaticKV | None = None

    def get(self, shapes, rows: int, capacity: int, dtype, device) -> StaticKV:
        capacity = graph_capacity(capacity)
        if self.kv is None or not self.kv.fits(shapes, rows, capacity, dtype, device):
            old = self.kv
            self.kv = None  # the old storage goes before the new one is made
            if old is not None and old.shapes == shapes:
                rows, capacity = max(rows, old.rows), max(capacity, old.capacity)
            del old
            self.kv = StaticKV(shapes, rows, capacity, dtype, device, graphs=True)
        return self.kv


def _padded(values: torch.Tensor, size: int) -> torch.Tensor:
    """``values`` [R, ...] with rows R..size-1 copies of row 0 (padding rows compute something finite)."""
    if values.shape[0] == size:
        return values
    return torch.cat([values, values[:1].expand(size - values.shape[0], *values.shape[1:])])


def decode(forward, cache_kw: str, shapes, dtype, layers, attention: torch.Tensor, logits: torch.Tensor,
           last_position: torch.Tensor, sampling, eos_id: int, uniforms: torch.Tensor | None, next_tokens,
           pool: CachePool | None = None) -> list[tuple[list, list, bool]]:
    """Sample up to ``sampling.max_new_tokens`` tokens for R rows after a prefill, stepping with
    ``forward`` (the model, or its compiled step) and its cache keyword ``cache_kw``. The prefill:
    ``shapes`` each layer's (kv heads, key dim, value dim) and ``dtype`` the cache's, ``layers``
    yielding each layer's (keys, values) [R, kv heads, L, head_dim], ``attention`` [R, L],
    ``logits`` [R, V] of the last prompt
    position, ``last_position`` [R] its RoPE position. ``uniforms`` [R, T] or None (greedy, or
    drawn here); ``next_tokens(logits, sampling, draws)`` the sampling rule; ``pool``: the cache
    kept between calls (graphs), else one made for this call. Returns (token ids, log-probs,
    finished) per row, the EOS included where a row ended."""
    rows, steps_max = logits.shape[0], sampling.max_new_tokens
    device = logits.device
    size = bucket(rows)
    capacity = attention.shape[1] + steps_max
    kv = pool.get(shapes, size, capacity, dtype, device) if pool is not None else \
        StaticKV(shapes, size, capacity, dtype, device, graphs=False)
    kv.fill(layers, attention)
    if uniforms is None and not sampling.greedy:
        uniforms = torch.rand(rows, steps_max)  # from torch's global (CPU) generator, which the loop seeds
    if uniforms is not None:  # a dummy last row for padding rows
        uniforms = torch.cat([uniforms, uniforms.new_zeros(1, steps_max)]).to(device)
    tokens = torch.zeros(rows + 1, steps_max, dtype=torch.long, device=device)
    logps = torch.zeros(rows + 1, steps_max, dtype=torch.float32, device=device)
    ended = torch.zeros(rows + 1, dtype=torch.bool, device=device)
    step_fn = StaticSteps(forward, cache_kw, kv, size)
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
                keep = (index[:, None] == live[None, :]).float().argmax(0)  # batch rows of the live rows, ascending
                kv.move(keep)
                size = bucket(live.numel())
                step_fn = StaticSteps(forward, cache_kw, kv, size)
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
