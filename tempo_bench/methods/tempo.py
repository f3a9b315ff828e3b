"""TEMPO (arXiv 2604.19295): test-time training as EM.

M-step: policy refinement on the unlabeled questions with the critic's scores as rewards (plus,
by default as in the paper's code, labeled rows with their true rewards). E-step: recalibrate the
critic on fresh rollouts of the CURRENT policy on labeled questions, either every K policy steps
(``recal_interval``; K=1 is the released code) or, with ``recal_trigger: drift``, whenever the
critic's calibration or within-question AUROC on a held-out labeled probe degrades past a
threshold since the last E-step (adaptive recalibration).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from pydantic import Field

from tempo_bench.methods.critic_based import CriticMethod, CriticOptions
from tempo_bench.methods.registry import register_method


class TempoOptions(CriticOptions):
    recal_interval: int | None = Field(1, ge=1, description="K: an E-step every K steps (None: never)")
    recal_trigger: Literal["interval", "drift"] = "interval"
    drift_ece_increase: float = Field(0.05, gt=0, description="drift: fire when probe ECE rises this much")
    drift_auroc_drop: float = Field(0.05, gt=0, description="drift: fire when probe AUROC-within drops this much")
    include_labeled: bool = Field(True, description="mix labeled rows into the M-step batch")
    labeled_prompts_per_step: int = Field(4, ge=1, description="labeled questions per M-step")


@register_method("tempo", default=True)
class Tempo(CriticMethod):
    Options = TempoOptions

    def __init__(self, options, n_train, seed: int = 0):
        super().__init__(options, n_train, seed)
        self.reference: dict[str, float] | None = None  # probe metrics since the last E-step

    def state_dict(self) -> dict:
        return {"reference": self.reference}

    def load_state_dict(self, state: dict) -> None:
        self.reference = state.get("reference")

    def labeled_per_step(self) -> int:
        return self.options.labeled_prompts_per_step if self.options.include_labeled else 0

    def train_rows(self, batch):
        """Drop labeled groups whose rewards all agree: they carry no signal for the policy."""
        rows, rewards = [], batch.rewards
        for i in range(len(batch.questions)):
            if batch.is_labeled(i) and torch.all(rewards[i, : self.n_train] == rewards[i, 0]):
                continue
            rows += [i * batch.n + j for j in range(self.n_train)]
        return rows

    def estep_due(self, step: int, probe: dict[str, float] | None) -> str | None:
        """Why an E-step should run after ``step`` (None: it should not)."""
        if self.options.recal_trigger == "interval":
            k = self.options.recal_interval
            return f"interval K={k}" if k is not None and step % k == 0 else None
        if self.reference is None:
            self.reference = probe
            return None
        ece_rise = probe["critic/probe/ece"] - self.reference["critic/probe/ece"]
        auroc_drop = self.reference["critic/probe/auroc_within"] - probe["critic/probe/auroc_within"]
        if ece_rise > self.options.drift_ece_increase:
            return f"probe ECE rose by {ece_rise:.3f}"
        if not math.isnan(auroc_drop) and auroc_drop > self.options.drift_auroc_drop:
            return f"probe AUROC-within dropped by {auroc_drop:.3f}"
        return None

    def update_critic(self, step, batch, ops):
        probe = ops.probe(step, batch.probe) if self.options.recal_trigger == "drift" else None
        reason = self.estep_due(step, probe)
        if reason is None:
            return {"critic/estep": 0.0}
        stats = ops.estep(step, batch.probe)
        self.reference = None  # re-measured at the next probe
        if self.options.recal_trigger == "drift":
            stats["critic/drift_fired"] = 1.0
            if getattr(ops, "log_text", None) is not None:
                ops.log_text(f"step {step}: E-step triggered: {reason}\n", f"critic/drift_step_{step:05d}.txt")
        return stats
