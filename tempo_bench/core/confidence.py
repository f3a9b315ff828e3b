"""A language model's confidence in its own response, read off its full next-token distributions
(the label-free rewards of Intuitor and RENT). Pure tensor functions; B rows, T response tokens,
V vocabulary entries."""

from __future__ import annotations

import math

import torch

from tempo_bench.core.algos import masked_mean, token_entropy


def token_self_certainty(logits: torch.Tensor) -> torch.Tensor:
    """KL(uniform || p) of each next-token distribution p = softmax(logits): [B, T, V] -> [B, T].

    Equal to logsumexp(logits) - mean(logits) - log V: 0 for a uniform distribution, growing as p
    concentrates. Intuitor's code (sunblaze-ucb/Intuitor, ``self_certainty_from_logits``) drops the
    constant log V; with group-normalised advantages the two give the same update."""
    logits = logits.float()
    return torch.logsumexp(logits, dim=-1) - logits.mean(dim=-1) - math.log(logits.shape[-1])


def response_confidence(logits: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per response, the mean over its tokens (``mask`` [B, T]) of the token self-certainty and
    the token entropy: {"self_certainty": [B], "entropy": [B]}."""
    return {
        "self_certainty": masked_mean(token_self_certainty(logits), mask, dim=1),
        "entropy": masked_mean(token_entropy(logits), mask, dim=1),
    }


def response_confidence_chunked(inputs: torch.Tensor, mask: torch.Tensor, temperature: float = 1.0, project=None,
                                vocab: int | None = None, chunk_entries: int | None = None) -> dict[str, torch.Tensor]:
    """response_confidence of the logits project(inputs) / temperature, [B, T, D] -> {name: [B]},
    computed over chunks of positions (as core.algos.token_logprobs_entropy): the float32 logits
    of one chunk at a time. Without gradients."""
    from tempo_bench.core.algos import CHUNK_ENTRIES, position_chunks

    project = project or (lambda x: x)
    parts: dict[str, list[torch.Tensor]] = {"self_certainty": [], "entropy": []}
    with torch.no_grad():
        for cols in position_chunks(*mask.shape, vocab or inputs.shape[-1], chunk_entries or CHUNK_ENTRIES):
            logits = project(inputs[:, cols]).float() / temperature
            parts["self_certainty"].append(token_self_certainty(logits))
            parts["entropy"].append(token_entropy(logits))
    return {name: masked_mean(torch.cat(values, dim=1), mask, dim=1) for name, values in parts.items()}

