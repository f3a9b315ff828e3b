"""Critic baselines, sharing TEMPO's reward and advantage (tempo_bench.methods.critic_based):

- fixed_critic: the starting critic, frozen: grounded once, then stale as the policy moves;
- online_critic: the critic updated every step on the current rollouts of the unlabeled
  questions, with targets it makes itself (+1 for a response in the majority answer cluster,
  -1 otherwise): fresh but ungrounded; no labels after the starting point.
"""

from __future__ import annotations

import torch

from tempo_bench.core.metrics import majority_cluster
from tempo_bench.methods.critic_based import CriticMethod
from tempo_bench.methods.registry import register_method
from tempo_bench.policy.batch import generation_batch


@register_method("fixed_critic", default=True)
class FixedCritic(CriticMethod):
    """The starting critic, never updated (the base class's critic schedule does nothing)."""


@register_method("online_critic", default=True)
class OnlineCritic(CriticMethod):
    def update_critic(self, step, batch, ops):
        targets = torch.full((len(batch.generation.token_ids),), -1.0)
        row_mask = torch.zeros(len(targets))
        for i in batch.unlabeled_groups:
            winner = majority_cluster(batch.clusters[i])
            for j, c in enumerate(batch.clusters[i]):
                row_mask[i * batch.n + j] = 1.0
                targets[i * batch.n + j] = 1.0 if winner is not None and c == winner else -1.0
        return ops.fit_batch(generation_batch(batch.generation, ops.pad_id), targets, row_mask, step, batch.probe)
