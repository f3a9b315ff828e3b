"""Sequences to train on or score: prompt + response rows, response-aligned, split into
micro-batches; and the one gradient-accumulation step the policy and the critic share."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from tempo_bench.core.algos import CHUNK_ENTRIES, token_logprobs_entropy
from tempo_bench.policy.model import compute_device, forward_takes, unwrapped
from tempo_bench.policy.sharding import grad_norm_value, is_sharded
from tempo_bench.rollout.base import Generation


@dataclass
class TrainBatch:
    """Sequences to train on, response-aligned. B rows, T = longest response.

    input_ids/attention [B, L]: prompt + response, right-padded; response_index [B, T]: the
    position whose logits predict response token t; response_ids, mask, old_logp [B, T]."""

    input_ids: torch.Tensor
    attention: torch.Tensor
    response_index: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.attention.sum())


def make_train_batch(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> TrainBatch:
    rows = len(prompt_ids)
    width = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    resp_width = max(1, max(len(r) for r in response_ids))
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    index = torch.zeros((rows, resp_width), dtype=torch.long)
    targets = torch.full((rows, resp_width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, resp_width))
    for row, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        seq = p + r
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention[row, : len(seq)] = 1
        if r:
            index[row, : len(r)] = torch.arange(len(p) - 1, len(p) + len(r) - 1)
            targets[row, : len(r)] = torch.tensor(r)
            mask[row, : len(r)] = 1.0
    return TrainBatch(input_ids, attention, index, targets, mask)


def model_inputs(batch: TrainBatch, device) -> dict[str, torch.Tensor | None]:
    """A right-padded batch as model keyword arguments, without its attention mask: under causal
    attention a real token never sees the padding after it, and position ids count from 0 with or
    without the mask, so the logits of every real token are the same (tested), while the model
    takes its unmasked causal-attention path (a toy forward+backward pass 1.04-1.2x faster on CPU)."""
    return {"input_ids": batch.input_ids.to(device), "attention_mask": None}


def response_logits(model, batch: TrainBatch) -> torch.Tensor:
    """Logits predicting each response token: [B, T, V]. Where the model's forward takes
    ``logits_to_keep`` (transformers' causal LMs), the language-model head runs only from the
    first response's first position on: no logits for the prompts before it."""
    device = compute_device(model)
    inputs, width = model_inputs(batch, device), batch.input_ids.shape[1]
    index = batch.response_index
    offset = 0
    if forward_takes(model, "logits_to_keep"):
        starts = torch.where(batch.mask > 0, index, width).min()  # the earliest predicting position
        offset = int(min(starts, width - 1))
        inputs["logits_to_keep"] = width - offset
    logits = model(**inputs).logits
    index = (index - offset).clamp(min=0).to(device)  # padding's index (0) is masked downstream
    return logits.gather(1, index.unsqueeze(-1).expand(-1, -1, logits.shape[-1]))


def response_states(model, batch: TrainBatch):
    """What the response positions' next-token distributions are computed from: (inputs [B, T, D],
    project, vocab). Where the model allows, the decoder's final hidden states (after its last
    norm; the decoder alone, so no other layer's outputs are kept) and the language-model head to
    apply to them chunk by chunk, so that no vocabulary-sized tensor exists for the whole batch
    (core.algos.token_logprobs_entropy); elsewhere (a sharded model, a model whose logits are not
    its head's output) the logits themselves, project None."""
    head = _lean_head(model)
    if head is None:
        logits = response_logits(model, batch)
        return logits, None, logits.shape[-1]
    device = compute_device(model)
    hidden = unwrapped(model).get_decoder()(**model_inputs(batch, device)).last_hidden_state
    index = batch.response_index.to(device).unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
    return hidden.gather(1, index), head, head.out_features


def response_logprobs(model, batch: TrainBatch, temperature: float, entropy: bool = True,
                      chunk_entries: int = CHUNK_ENTRIES):
    """(log p of each response token [B, T], the entropy of its distribution [B, T] or None) under
    ``model`` at ``temperature``, from response_states chunk by chunk."""
    inputs, project, vocab = response_states(model, batch)
    return token_logprobs_entropy(inputs, batch.response_ids.to(inputs.device), temperature, entropy,
                                  project=project, vocab=vocab, chunk_entries=chunk_entries)


def _lean_head(model):
    """The language-model head response_states may apply to the decoder's output itself, or None
    where the logits must come from the model's own forward: a sharded model (its root's hooks
    gather the head), or one whose logits are not head(decoder output): soft-capped, scaled,
    multiplied (checked once per model on a short input, not by a list of config names)."""
    if is_sharded(model):
        return None
    base = unwrapped(model)
    head = base.get_output_embeddings() if hasattr(base, "get_output_embeddings") else None
    if not isinstance(head, torch.nn.Linear) or not hasattr(base, "get_decoder"):
        return None
    checked = model.__dict__.get("_tempo_lean_head")
    if checked is None:
        checked = model.__dict__["_tempo_lean_head"] = _head_reproduces_logits(model, base, head)
    return head if checked else None


@torch.no_grad()
def _head_reproduces_logits(model, base, head) -> bool:
    ids = torch.arange(1, 9).remainder(head.out_features).unsqueeze(0).to(head.weight.device)
    was_training = model.training
    model.eval()
    try:
        logits = model(input_ids=ids).logits.float()
        lean = head(base.get_decoder()(input_ids=ids).last_hidden_state).float()
    finally:
        model.train(was_training)
    return lean.shape == logits.shape and torch.allclose(lean, logits, rtol=1e-3, atol=1e-3 * float(logits.abs().max()))


def micro_batches(rows: torch.Tensor, size: int | None, lengths: torch.Tensor | None = None,
                  buckets: int = 1, tokens: int | None = None) -> list[torch.Tensor]:
    """Row indices split into micro-batches of at most ``size`` rows (None: no limit). With
    ``buckets`` > 1 the rows are first sorted by ``lengths`` and cut into that many groups of
    similar length, so that each micro-batch pads to its own longest row, not the batch's. With
    ``tokens`` (and ``lengths``), rows sorted by length are packed instead: a micro-batch takes rows
    while its rows times its longest row's length stays within ``tokens`` (a longer row goes alone)."""
    if tokens is not None and lengths is not None:
        return _packed(rows[torch.argsort(lengths[rows], stable=True)], lengths, tokens)
    if buckets > 1 and lengths is not None and len(rows) > 1:
        rows = rows[torch.argsort(lengths[rows], stable=True)]
        groups = list(rows.chunk(min(buckets, len(rows))))
    else:
        groups = [rows]
    return [part for group in groups for part in (group.split(size) if size else [group]) if len(part)]


def _packed(rows: torch.Tensor, lengths: torch.Tensor, tokens: int) -> list[torch.Tensor]:
    parts, current = [], []
    for row in rows.tolist():  # ascending length: the newest row is the micro-batch's longest
        if current and (len(current) + 1) * int(lengths[row]) > tokens:
            parts.append(current)
            current = []
        current.append(row)
    if current:
        parts.append(current)
    return [torch.tensor(part, dtype=rows.dtype) for part in parts]


def generation_batch(generation: Generation, pad_id: int, rows: list[int] | None = None) -> TrainBatch:
    """Prompt + response sequences of ``rows`` (default: all) of a generation."""
    rows = list(range(len(generation.token_ids))) if rows is None else rows
    return make_train_batch(
        [generation.prompt_ids[r // generation.n] for r in rows],
        [generation.token_ids[r] for r in rows],
        pad_id,
    )


def select_rows(batch: TrainBatch, rows: torch.Tensor) -> TrainBatch:
    """The sub-batch of ``rows``, trimmed to its own longest sequence and response."""
    sub = TrainBatch(*(getattr(batch, f)[rows] for f in TrainBatch.__dataclass_fields__))
    width, resp = int(sub.attention.sum(1).max()), max(1, int(sub.mask.sum(1).max()))
    return TrainBatch(sub.input_ids[:, :width], sub.attention[:, :width], sub.response_index[:, :resp],
                      sub.response_ids[:, :resp], sub.mask[:, :resp])


def accumulated_step(optimizer, parts: Iterable, loss_of: Callable, total: float, grad_clip: float, what: str,
                     ranks=None) -> tuple[dict[str, float], float]:
    """One optimiser step whose gradient equals the whole minibatch's: ``loss_of(part)`` returns
    (loss, units, stats) for one micro-batch, its loss a mean over its own ``units`` (tokens, rows
    or states); each is weighted by units / ``total`` before its backward pass. A statistic given
    as a callable is evaluated after the backward pass (its temporaries then do not share memory
    with the autograd graph). Returns the
    share-weighted statistics (the loss among them) and the gradient norm before clipping. With
    ``ranks`` (a data-parallel run), each rank's parts are its rows of the minibatch, and the
    gradients and statistics are summed over ranks before clipping.

    The parameters clipped (and summed) are the optimiser's own: a module's ``parameters()`` can
    name other tensors, e.g. an FSDP root's gathered ones after a no-grad pass, which never get a
    gradient (measured: the sharded critic's clip norm then left out its embeddings and head)."""
    params = [param for group in optimizer.param_groups for param in group["params"]]
    optimizer.zero_grad(set_to_none=True)
    # no host synchronisation inside the loop (a GPU keeps queueing work): statistics add up on
    # the device in float64 (what Python floats would give) and the finiteness of the losses is
    # one flag, both read once after the last backward pass
    stats: dict[str, torch.Tensor] = {}
    parts = list(parts) if ranks is None else ranks.align(list(parts))
    finite = None
    for part in parts:
        if part is None:  # a sharded policy's pass this rank has no rows for: one row, weighed 0
            padding, _, _ = loss_of(torch.zeros(1, dtype=torch.long))
            torch.nan_to_num(padding * 0.0).backward()
            continue
        loss, units, part_stats = loss_of(part)
        finite = torch.isfinite(loss.detach()) if finite is None else finite & torch.isfinite(loss.detach())
        share = units / total
        # a non-finite loss still runs its backward pass (nan_to_num passes no gradient from it,
        # though inf or NaN activations behind it can still make NaN gradients), so the other
        # ranks of a sharded policy meet this pass's collectives; the step then stops below,
        # before the optimiser moves, whatever the gradients hold
        (torch.nan_to_num(loss, nan=0.0, posinf=0.0, neginf=0.0) * share).backward()
        for key, value in {"loss": loss, **part_stats}.items():
            value = value() if callable(value) else value
            value = value.detach().double() if torch.is_tensor(value) else torch.tensor(float(value), dtype=torch.float64)
            stats[key] = stats.get(key, 0.0) + share * value
        del loss
    broken = None if finite is None or bool(finite) else f"{what} is not finite"
    if ranks is not None and ranks.distributed and ranks.any(broken is not None):  # every rank stops, not one
        raise FloatingPointError(broken or f"{what} is not finite on another rank")
    if broken is not None:
        raise FloatingPointError(broken)
    stats = {key: float(value) for key, value in stats.items()}
    if ranks is not None and ranks.distributed:
        ranks.sum_gradients(params)
        stats = ranks.sum_values(stats)
    grad_norm = grad_norm_value(torch.nn.utils.clip_grad_norm_(params, grad_clip))
    optimizer.step()
    return stats, grad_norm
