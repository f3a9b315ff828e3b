"""The value model on the toy backbone: shapes, masking of unlabeled rows, save/load."""

import types

import torch

from tempo_bench.config import CriticConfig
from tempo_bench.critic.model import Critic, StateIndex
from tempo_bench.policy.batch import make_train_batch
from tempo_bench.policy.model import load_tokenizer


def toy_batch():
    tok = load_tokenizer("toy")
    prompts = [tok(p, add_special_tokens=False)["input_ids"] for p in ["Q:12+9\n", "Q:345+1\n", "Q:7+7\n"]]
    responses = [tok(r, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
                 for r in ["2+9=11 |1\n", "5+1=6 |6\n#### 346\n", "7+7=14 |4\n#### 14\n"]]
    return make_train_batch(prompts, responses, tok.pad_token_id)


def test_state_index_reads_values_from_prompt_end_to_response_end():
    batch = toy_batch()
    states = StateIndex.of(batch)
    lengths = batch.mask.sum(1).long()
    prompt_lens = batch.attention.sum(1) - lengths
    assert states.index.shape == (3, batch.mask.shape[1] + 1)
    for b in range(3):
        assert states.index[b, 0] == prompt_lens[b] - 1  # V(x): the state after the prompt
        assert states.index[b, lengths[b]] == prompt_lens[b] + lengths[b] - 1  # full response
        assert states.mask[b].sum() == lengths[b] + 1


def test_fit_ignores_unlabeled_rows_and_roundtrips(tmp_path):
    cfg = CriticConfig(lr=1e-3)
    batch = toy_batch()
    torch.manual_seed(0)
    a = Critic.from_pretrained("toy", cfg)
    b = a.clone()
    mask = torch.tensor([1.0, 1.0, 0.0])
    stats = a.fit(batch, torch.tensor([1.0, -1.0, 1.0]), mask, 3, 10.0, generator=torch.Generator().manual_seed(0))
    b.fit(batch, torch.tensor([1.0, -1.0, -1.0]), mask, 3, 10.0, generator=torch.Generator().manual_seed(0))
    for pa, pb in zip(a.model.parameters(), b.model.parameters()):
        assert torch.equal(pa, pb)  # the masked row's target changed nothing
    assert stats["critic/value_loss"] > 0
    values, final = a.score(batch)
    assert values.shape == (3, batch.mask.shape[1] + 1) and final.shape == (3,)
    assert final[0] > final[1]  # it moved towards +1 for row 0 and -1 for row 1
    loaded = Critic.load(a.save(tmp_path / "critic"), cfg)
    assert torch.allclose(loaded.score(batch)[1], final)
    assert (tmp_path / "critic" / "model.safetensors").is_file()


def test_starting_critic_key_follows_the_lora_settings_of_a_lora_critic_only():
    """A LoRA critic is built from lora.* (rank, targets, fused arithmetic): another setting is
    another starting critic; a full-weight critic does not depend on them."""
    from tempo_bench.config import load_config
    from tempo_bench.critic.ops import starting_critic_key

    def key(*overrides):
        return starting_critic_key(load_config("toy-smoke", ["method=tempo", *overrides]))

    assert key("critic.lora=true") != key("critic.lora=true", "lora.r=4") != key("critic.lora=true", "lora.fused=false")
    assert key() == key("lora.r=4") == key("lora.fused=false")


def test_a_starting_critic_read_back_from_the_disk_cache_is_placed_like_a_fresh_one(tmp_path, monkeypatch):
    """The disk-cached starting critic (every later process: compare workers, sweep trials, a
    second run) was loaded without the model settings, so `place` put it on the CPU in a GPU run.
    Built fresh and read back, it is placed by the run's model settings both times (a spy on
    `place`: this machine has no GPU to land on), and equal."""
    from tempo_bench.config import load_config
    from tempo_bench.policy import model as policy_model
    from tempo_bench.critic.ops import starting_critic

    placed_with, place = [], policy_model.place
    monkeypatch.setattr(policy_model, "place", lambda model, cfg: placed_with.append(cfg) or place(model, cfg))
    config = load_config("toy-smoke", ["method=tempo", "model.dtype=bfloat16", "critic.warmup_epochs=0"])
    built = starting_critic(config, None, None, 0, [], None, tmp_path, cache={})
    read_back = starting_critic(config, None, None, 0, [], None, tmp_path, cache={})  # a new process's
    assert placed_with == [config.model, config.model]
    for critic in (built, read_back):
        assert {p.dtype for p in critic.model.parameters()} == {torch.bfloat16}
    assert all(torch.equal(a, b) for a, b in zip(built.model.state_dict().values(), read_back.model.state_dict().values()))


def test_every_way_to_build_a_critic_applies_the_model_settings(tmp_path):
    """One builder (policy.model.build_model): a fresh critic, a saved one read back (a resumed
    run's, a cached starting critic, critic.init) and a LoRA one all get gradient checkpointing
    (Critic.load left it out) and LoRA's fused layers where lora.fused says."""
    from peft.tuners.lora import Linear as LoraLinear

    from tempo_bench.config import load_config

    def fused_layers(model):
        return [isinstance(m.__dict__.get("forward"), types.MethodType) for m in model.modules() if type(m) is LoraLinear]

    for critic_lora in ("false", "true"):
        config = load_config("toy-smoke", ["method=tempo", "model.gradient_checkpointing=true",
                                           f"critic.lora={critic_lora}", "critic.share_base=false"])
        fresh = Critic.from_pretrained("toy", config.critic, config.model, config.lora)
        loaded = Critic.load(fresh.save(tmp_path / critic_lora), config.critic, config.model, lora_cfg=config.lora)
        for critic in (fresh, loaded):
            assert critic.model.is_gradient_checkpointing
            fused = fused_layers(critic.model)
            assert (all(fused) and len(fused) > 0) if critic_lora == "true" else fused == []
        assert torch.allclose(fresh.score(toy_batch())[1], loaded.score(toy_batch())[1], atol=1e-6)
