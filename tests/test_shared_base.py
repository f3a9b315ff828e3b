"""A LoRA self-critic sharing the policy's base (critic.share_base): one copy of the base, two
adapters that never move each other's outputs, and the same run as with two copies."""

import pytest
import torch

from tempo_bench.config import load_config
from tempo_bench.core.errors import ConfigError
from tempo_bench.core.loggers import MemoryLogger
from tempo_bench.critic.model import Critic
from tempo_bench.policy.model import load_policy, trainable_parameters
from tempo_bench.policy.update import policy_update, sampled_logprobs
from tempo_bench.run.run import run_ttt
from test_critic import toy_batch

SETTINGS = ["method=tempo", "critic.lora=true", "train.steps=2", "train.prompts_per_step=4", "eval.size=4",
            "eval.k=2", "threads=1", "critic.warmup_questions=8", "critic.warmup_epochs=1"]


def shared_setup():
    config = load_config("toy-smoke", SETTINGS)
    torch.manual_seed(0)
    policy = load_policy(config.model, config.lora)
    optimizer = torch.optim.AdamW(trainable_parameters(policy), lr=1e-2)
    return config, policy, optimizer, Critic.sharing_base(policy, config.critic, config.lora)


def test_each_update_leaves_the_other_model_unchanged():
    config, policy, optimizer, critic = shared_setup()
    batch, targets = toy_batch(), torch.tensor([1.0, -1.0, 1.0])
    logp_before, (values_before, _) = sampled_logprobs(policy, batch, 1.0, None), critic.score(batch)
    critic.fit(batch, targets, torch.ones(3), 2, 10.0, generator=torch.Generator().manual_seed(0))
    values_after, _ = critic.score(batch)
    assert (values_after - values_before).abs().max() > 1e-3  # the critic learned
    assert torch.equal(sampled_logprobs(policy, batch, 1.0, None), logp_before)  # the policy did not move
    policy_update(policy, optimizer, batch, torch.tensor([1.0, -1.0, 0.5]), config.train, 1.0)
    assert (sampled_logprobs(policy, batch, 1.0, None) - logp_before).abs().max() > 1e-3  # the policy learned
    assert torch.equal(critic.score(batch)[0], values_after)  # the critic did not move
    # one base: the critic's parameters are its adapter and head, none of them the policy's
    policy_ids = {id(p) for p in trainable_parameters(policy)}
    assert not policy_ids & {id(p) for p in critic.model.parameters()}
    assert policy.active_adapter == "default"


def test_a_saved_shared_critic_loads_onto_a_policy_equal(tmp_path):
    config, policy, _, critic = shared_setup()
    batch = toy_batch()
    critic.fit(batch, torch.tensor([1.0, -1.0, 1.0]), torch.ones(3), 1, 10.0, generator=torch.Generator().manual_seed(0))
    critic.save(tmp_path / "critic")
    assert not (tmp_path / "critic" / "model.safetensors").exists()  # no base weights
    _, other_policy, _, _ = shared_setup()
    loaded = Critic.load(tmp_path / "critic", config.critic, config.model, other_policy, config.lora)
    assert torch.equal(loaded.score(batch)[0], critic.score(batch)[0])
    assert loaded.optimizer.state_dict()["state"].keys() == critic.optimizer.state_dict()["state"].keys()
    with pytest.raises(ConfigError, match="load it with the policy"):
        Critic.load(tmp_path / "critic", config.critic, config.model)


def run_metrics(tmp_path, share: str, steps: int = 2, resume: bool = False, folder: str | None = None):
    config = load_config("toy-smoke", [*SETTINGS, f"critic.share_base={share}", f"train.steps={steps}",
                                       "train.checkpoint_every=1", f"out={tmp_path / 'out'}"])
    logger = MemoryLogger()
    result = run_ttt(config, logger, out_dir=tmp_path / (folder or share), progress=False, resume=resume)
    return logger.metrics, result


def test_a_shared_base_run_logs_what_a_two_copy_run_logs(tmp_path):
    """Same seed, same numbers: measured identical on this CPU; the tolerance (1e-6) allows for a
    different summation order on other hardware."""
    shared, result = run_metrics(tmp_path, "true")
    copies, _ = run_metrics(tmp_path, "false")
    assert set(shared) == set(copies)
    compared = [k for k in shared if not k.startswith("time/")]
    assert {"critic/value_loss", "critic/probe/auroc", "reward/mean", "eval/mean_at_k"} <= set(compared)
    for key in compared:
        assert [step for step, _ in shared[key]] == [step for step, _ in copies[key]], key  # every step logged
        for (step, a), (_, b) in zip(shared[key], copies[key]):
            assert a == pytest.approx(b, rel=1e-6, abs=1e-6, nan_ok=True), (key, step)
    # the artefacts: the policy's adapter alone, the critic's adapter and head without a base
    assert not (result.out_dir / "adapter" / "critic").exists()
    assert (result.out_dir / "critic" / "shared_base.json").is_file()


def test_a_shared_base_run_resumes_like_an_uninterrupted_one(tmp_path):
    whole, _ = run_metrics(tmp_path, "true", steps=2, folder="whole")
    run_metrics(tmp_path, "true", steps=1, folder="resumed")
    resumed, _ = run_metrics(tmp_path, "true", steps=2, resume=True, folder="resumed")
    for key in ("critic/value_loss", "reward/mean", "critic/probe/ece", "eval/mean_at_k", "tokens/critic"):
        assert dict(resumed[key])[2] == pytest.approx(dict(whole[key])[2], rel=1e-6), key


def test_share_base_true_where_it_cannot_apply_is_an_error():
    with pytest.raises(ConfigError, match="critic.share_base"):
        load_config("toy", ["critic.share_base=true"])  # the toy's critic is its own verifier backbone
    assert not load_config("toy").critic_shares_base()
    assert load_config("qwen3-8b-aime24").critic_shares_base()  # the paper presets' LoRA self-critic
