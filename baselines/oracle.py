"""oracle: true 1/0 rewards on the TEST questions. An upper bound that uses test labels: it is the
only method handed the AnswerKey, and every run of it is tagged uses_test_labels=true and named
with an ORACLE marker."""

from __future__ import annotations

import torch

from tempo_bench.methods.base import Method, RewardOutput, RolloutBatch
from tempo_bench.methods.registry import register_method
from tempo_bench.tasks.base import AnswerKey


@register_method("oracle")
class Oracle(Method):
    uses_test_labels = True
    answer_key: AnswerKey | None = None  # set by the loop, for this method only

    def rewards(self, batch: RolloutBatch) -> RewardOutput:
        if self.answer_key is None:
            raise RuntimeError("the oracle needs the test AnswerKey (set by the loop)")
        rewards = torch.zeros(len(batch.questions), batch.n)
        for i, (q, row) in enumerate(zip(batch.questions, batch.answers)):
            for j, answer in enumerate(row):
                rewards[i, j] = float(self.answer_key.is_correct_answer(q.id, answer))
        return RewardOutput(rewards)
