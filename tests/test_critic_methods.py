"""Critic methods on constructed batches: rewards, advantages, E-step schedule, value loss."""

import math
from types import SimpleNamespace

import pytest
import torch
from batches import advantage_phase, make_batch
from tempo_bench.baselines.critic_baselines import FixedCritic, OnlineCritic
from tempo_bench.baselines.empo import EMPO
from tempo_bench.baselines.labeled_rlvr import LabeledRLVR
from tempo_bench.baselines.oracle import Oracle

from tempo_bench.core.algos import (
    clipped_value_loss,
    em_group_advantages,
    em_token_advantages,
)
from tempo_bench.critic.ops import StepProbe
from tempo_bench.policy.batch import generation_batch
from tempo_bench.methods.tempo import Tempo
from tempo_bench.tasks import AnswerKey


def test_critic_reward_is_value_for_unlabeled_and_truth_for_labeled():
    batch = make_batch([["1", "2", "1"], ["5", "6", None]], labels=[None, "5"],
                       final_values=[[0.3, -0.2, 0.9], [0.1, 0.2, 0.3]])
    out = FixedCritic(FixedCritic.Options(), n_train=3).rewards(batch)
    assert torch.allclose(out.rewards, torch.tensor([[0.3, -0.2, 0.9], [1.0, -1.0, -1.0]]))
    assert out.threshold == 0.0


def test_em_token_advantages_by_hand():
    values = torch.tensor([[0.0, 0.5, 0.2], [0.1, -0.3, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    terminal = torch.tensor([1.0, -1.0])
    raw = [1.0, 0.5, 0.8, -1.1, -0.7]  # R - V(x, y_<t) on the 5 real tokens
    mean = sum(raw) / 5
    std = math.sqrt(sum((r - mean) ** 2 for r in raw) / 5)
    got = em_token_advantages(values, terminal, mask)
    expected = [(r - mean) / std for r in raw]
    assert torch.allclose(got[mask.bool()], torch.tensor(expected), atol=1e-5)
    assert got[1, 2] == 0


def test_em_group_advantages_clamp_then_normalise():
    rewards = torch.tensor([[1.7, -1.0, 0.0]])  # 1.7 is clamped to 1
    got = em_group_advantages(rewards, eps=0.0)
    clamped = [1.0, -1.0, 0.0]
    std = math.sqrt(sum(v**2 for v in clamped) / 2)  # sample std, mean 0
    assert torch.allclose(got, torch.tensor([clamped]) / std, atol=1e-6)


def test_tempo_advantage_estimators_on_a_batch():
    batch = make_batch([["1", "2"], ["5", "6"]], labels=[None, "5"], final_values=[[0.4, -0.4], [0.0, 0.0]])
    method = Tempo(Tempo.Options(advantage="em_token"), n_train=2)
    rewards = method.rewards(batch).rewards  # [[.4, -.4], [1, -1]]
    batch.rewards = rewards
    rows = method.train_rows(batch)
    adv = advantage_phase(batch, method, rows)  # every response 3 tokens long
    # state values are 0, so A_t = R on every token, then whitened over the 12 tokens
    raw = torch.tensor([0.4, -0.4, 1.0, -1.0]).repeat_interleave(3)
    assert torch.allclose(adv.reshape(-1), (raw - raw.mean()) / raw.std(unbiased=False), atol=1e-5)
    em = advantage_phase(batch, Tempo(Tempo.Options(advantage="em"), n_train=2), rows)
    s = math.sqrt(0.32)  # sample std of (.4, -.4)
    assert torch.allclose(em, torch.tensor([0.4 / s, -0.4 / s, 1 / math.sqrt(2), -1 / math.sqrt(2)]), atol=1e-5)


def test_tempo_drops_labeled_groups_whose_rewards_agree():
    batch = make_batch([["1", "2"], ["5", "5"], ["7", "8"]], labels=[None, "5", "7"],
                       final_values=[[0.1, 0.1], [0.0, 0.0], [0.0, 0.0]])
    method = Tempo(Tempo.Options(), n_train=2)
    batch.rewards = method.rewards(batch).rewards
    rows = method.train_rows(batch)
    assert rows == [0, 1, 4, 5]  # unlabeled group kept even though its values agree
    assert method.labeled_per_step() == 4
    assert Tempo(Tempo.Options(include_labeled=False), n_train=2).labeled_per_step() == 0


class RecordingOps:
    """Stands in for CriticOps to record what a method asks of its critic."""

    pad_id = 0

    def __init__(self, probes=()):
        self.calls, self.probes = [], list(probes)

    def estep(self, step, probe):
        assert isinstance(probe, StepProbe), "the E-step gets the step's probe (it may draw its samples)"
        self.calls.append(("estep", step))
        return {"critic/estep": 1.0}

    def probe(self, step, probe):
        assert isinstance(probe, StepProbe)
        return self.probes[step - 1]

    def fit_batch(self, batch, targets, row_mask, step, probe):
        assert isinstance(probe, StepProbe), "a fit clears the step's probe scores"
        self.calls.append(("fit", targets.tolist(), row_mask.tolist()))
        return {}


def a_step():
    """What a critic schedule reads of a step's batch when it needs no rollouts: its probe."""
    return SimpleNamespace(probe=StepProbe())


@pytest.mark.parametrize("k,expected", [(1, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]), (5, [5, 10]), (None, [])])
def test_interval_schedule_fires_every_k_steps(k, expected):
    method, ops = Tempo(Tempo.Options(recal_interval=k), n_train=2), RecordingOps()
    for step in range(1, 11):
        method.update_critic(step, a_step(), ops)
    assert ops.calls == [("estep", s) for s in expected]


def test_drift_trigger_fires_exactly_when_probe_degrades():
    probe = lambda ece, auroc: {"critic/probe/ece": ece, "critic/probe/auroc_within": auroc}
    probes = [
        probe(0.10, 0.80),  # 1: reference
        probe(0.14, 0.77),  # 2: within both thresholds
        probe(0.16, 0.80),  # 3: ECE +0.06 > 0.05 -> E-step
        probe(0.30, 0.50),  # 4: new reference (first probe after the E-step)
        probe(0.31, 0.44),  # 5: AUROC -0.06 > 0.05 -> E-step
        probe(0.05, float("nan")),  # 6: new reference
        probe(0.06, 0.9),  # 7: NaN reference AUROC never fires
    ]
    method = Tempo(Tempo.Options(recal_trigger="drift", drift_ece_increase=0.05, drift_auroc_drop=0.05), n_train=2)
    ops = RecordingOps(probes)
    fired = [step for step in range(1, 8) if method.update_critic(step, a_step(), ops).get("critic/drift_fired")]
    assert fired == [3, 5]
    assert ops.calls == [("estep", 3), ("estep", 5)]


def test_fixed_critic_never_updates_and_online_uses_majority_pseudo_labels():
    batch = make_batch([["1", "1", "2"], ["5", "6", "6"]], labels=[None, "5"],
                       final_values=[[0.0] * 3, [0.0] * 3])
    ops = RecordingOps()
    FixedCritic(FixedCritic.Options(), n_train=3).update_critic(1, batch, ops)
    assert ops.calls == []
    OnlineCritic(OnlineCritic.Options(), n_train=3).update_critic(1, batch, ops)
    (_, targets, row_mask), = ops.calls
    assert targets[:3] == [1.0, 1.0, -1.0]
    assert row_mask == [1.0, 1.0, 1.0, 0.0, 0.0, 0.0]  # labeled rows are not its targets


def test_empo_labeled_rlvr_and_oracle_rewards():
    batch = make_batch([["1", "1", "2", None]])
    assert EMPO(EMPO.Options(), n_train=4).rewards(batch).rewards.tolist() == [[0.5, 0.5, 0.25, 0.0]]
    labeled = make_batch([["5", "6", "5.0", None]], labels=["5"])
    rlvr = LabeledRLVR(LabeledRLVR.Options(), n_train=4)
    assert rlvr.rewards(labeled).rewards.tolist() == [[1.0, -1.0, 1.0, -1.0]]
    assert rlvr.unlabeled_per_step(16) == 0 and rlvr.labeled_per_step() == 16
    oracle = Oracle(Oracle.Options(), n_train=4)
    with pytest.raises(RuntimeError, match="needs the test AnswerKey"):
        oracle.rewards(batch)
    oracle.answer_key = AnswerKey({"q0": "2"})
    assert oracle.rewards(batch).rewards.tolist() == [[0.0, 0.0, 1.0, 0.0]]
    assert Oracle.uses_test_labels and not any(
        m.uses_test_labels for m in (EMPO, LabeledRLVR, Tempo, FixedCritic, OnlineCritic))


def test_clipped_value_loss_by_hand_and_mask():
    values = torch.tensor([[0.5, 0.9], [3.0, -3.0]])
    old = torch.tensor([[0.2, 0.2], [0.0, 0.0]])
    returns = torch.tensor([[1.0, 1.0], [1.0, 1.0]])
    mask = torch.tensor([[1.0, 1.0], [0.0, 0.0]])
    # row 0: v=.5 clip->.3: max(.25, .49)=.49; v=.9 clip->.3: max(.01, .49)=.49 -> 0.5 * .49
    assert clipped_value_loss(values, old, returns, mask, 0.1).item() == pytest.approx(0.245)
    changed = values.clone()
    changed[1] = torch.tensor([100.0, -100.0])  # masked row: no effect
    assert clipped_value_loss(changed, old, returns, mask, 0.1).item() == pytest.approx(0.245)


def test_a_steps_probe_samples_are_drawn_once_and_rescored_only_after_the_critic_learns(tmp_path):
    """The probe is state of the step (RolloutBatch.probe), not of CriticOps: an E-step draws the
    probe's samples in its own generate call; the critic_probe phase then only scores them; with
    no E-step the phase draws them; scores are reused until the critic learns."""
    from tempo_bench.config import load_config
    from tempo_bench.core.loggers import MemoryLogger
    from tempo_bench.run.run import build_run

    config = load_config("toy-smoke", ["method=tempo", "critic.warmup_epochs=0", "critic.estep_questions=2",
                                       "critic.probe_questions=2", f"out={tmp_path}", "threads=1"])
    ops = build_run(config, MemoryLogger(), out_dir=tmp_path / "run").critic_ops
    calls, generate = [], ops.backend.generate
    ops.backend.generate = lambda prompts, sampling: calls.append(len(prompts)) or generate(prompts, sampling)

    with_estep = StepProbe()
    ops.estep(1, with_estep)
    assert calls == [2 + 2] and with_estep.rollouts is not None  # E-step and probe questions, one call
    scores = ops.probe(1, with_estep)
    assert calls == [4] and ops.probe(1, with_estep) is scores  # scored once, nothing drawn

    alone = StepProbe()
    ops.probe(2, alone)
    assert calls == [4, 2]  # no E-step this step: the probe draws its own samples
    before = alone.scores
    batch = generation_batch(alone.rollouts[0], ops.pad_id)
    ops.fit_batch(batch, torch.ones(len(batch.input_ids)), torch.ones(len(batch.input_ids)), 2, alone)
    assert alone.scores is None and ops.probe(2, alone) != before and calls == [4, 2]  # rescored, not redrawn
