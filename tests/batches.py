"""Constructed rollout batches for method tests."""

import torch

from tempo_bench.grading.answers import answers_equivalent, cluster_answers
from tempo_bench.methods.base import RolloutBatch
from tempo_bench.rollout import Generation
from tempo_bench.tasks import LabeledQuestion, Question


def make_batch(answer_groups, labels=None, final_values=None, response_len=3):
    """Groups of extracted answers (None: unparseable). ``labels[i]`` makes group i a labeled
    question with that gold answer. ``final_values`` [G, N] sets the critic values; every state
    value is then set to 0 so em_token advantages are easy to compute by hand."""
    n = len(answer_groups[0])
    labels = labels or [None] * len(answer_groups)
    texts = [f"#### {a}" if a is not None else "no idea" for g in answer_groups for a in g]
    gen = Generation(n, [[1]] * len(answer_groups), [[5] * response_len] * len(texts),
                     [[0.0] * response_len] * len(texts), texts, [True] * len(texts))
    questions = [Question(f"q{i}", "Q") if lab is None else LabeledQuestion(f"l{i}", "Q", lab)
                 for i, lab in enumerate(labels)]
    labeled = [None if lab is None else [a is not None and answers_equivalent(lab, a) for a in g]
               for g, lab in zip(answer_groups, labels)]
    batch = RolloutBatch(questions, gen, [list(g) for g in answer_groups],
                         [cluster_answers(list(g)) for g in answer_groups], labeled)
    if final_values is not None:
        batch.final_values = torch.tensor(final_values, dtype=torch.float)
        batch.state_values = torch.zeros(len(texts), response_len + 1)
    return batch


def advantage_phase(batch, method, rows=None):
    """The loop's advantage phase on a constructed batch (``batch.rewards`` set): the trained rows,
    their sequences (every response 3 tokens: mask [R, 3] of ones) and the method's advantages."""
    from tempo_bench.policy.batch import generation_batch

    batch.rows = method.train_rows(batch) if rows is None else rows
    batch.train = generation_batch(batch.generation, 0, batch.rows)
    return method.advantages(batch)


def trained_toy_policy(seed: int = 0, scale: float = 0.1, device: str = "cpu", path: str = "toy"):
    """The toy policy (or the model at ``path``) with random non-zero LoRA B matrices: an adapter
    whose effect shows (a fresh adapter is zero, so serving the wrong weights would go unnoticed)."""
    from tempo_bench.config import LoraConfig, ModelConfig
    from tempo_bench.policy.model import load_policy

    policy = load_policy(ModelConfig(path=path, device=device), LoraConfig())
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=generator) * scale)
    return policy


def scale_lora(policy, factor: float) -> None:
    """Change the adapter in place (a stand-in for a policy update)."""
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.mul_(factor)
