"""The GPU memory plan (`tempo-bench run --dry-run`): computed offline from shipped model
configs, its counts against naive references, and a run that cannot fit stopped before any work."""

from pathlib import Path

import pytest

from tempo_bench.config import LoraConfig, ModelConfig, config_identity, load_config
from tempo_bench.config.loading import preset_names
from tempo_bench.run.memory_plan import SHIPPED_CONFIGS, GiB, model_shape, plan_memory

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

PAPER_PRESETS = [name for name in preset_names() if not name.startswith("toy")]


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_every_paper_preset_fits_the_card_it_claims(preset):
    config = load_config(preset)
    # no GPU here: the card the preset is sized for; a sharded preset on the node of 8 ranks it names
    sharded = dict(ranks=8, host_gb=1024.0) if config.train.sharding == "fsdp" else {}
    plan = plan_memory(config, cuda_gpus=0, **sharded)
    assert plan.card_gb == (config.model.gpu_memory_gb or 79)
    assert plan.fits(), "\n".join(plan.lines())


def test_counts_agree_with_the_model_and_peft():
    """Parameters counted on the meta device equal the loaded model's; the LoRA count equals
    what peft makes trainable for the same rank and targets."""
    from tempo_bench.policy.model import load_policy

    lora = LoraConfig(r=4)
    shape = model_shape("toy")
    policy = load_policy(ModelConfig(), lora)  # the policy as a run loads it: base + LoRA
    named = dict(policy.named_parameters())
    assert shape.params == sum(p.numel() for n, p in named.items() if "lora_" not in n)
    assert shape.lora_params(4, lora.target_modules) == sum(p.numel() for n, p in named.items() if "lora_" in n)


def test_plan_figures_by_hand():
    """Qwen3-8B in bf16 with a self-critic, vLLM at 0.45 of an 80 GiB card."""
    config = load_config("qwen3-8b-aime24")
    plan = plan_memory(config, cuda_gpus=1, card_gb=80.0)
    rollout = {p.name: p for p in plan.phases}["rollout"]
    params = 8_190_735_360  # Qwen3-8B, untied embeddings
    assert rollout.items["policy weights"] == pytest.approx(params * 2 / GiB)
    assert "critic weights" not in rollout.items  # the LoRA self-critic shares the policy's base
    two_copies = {p.name: p for p in plan_memory(load_config("qwen3-8b-aime24", ["critic.share_base=false"]),
                                                  cuda_gpus=1, card_gb=80.0).phases}
    assert two_copies["rollout"].items["critic weights"] == rollout.items["policy weights"]
    for phase in plan.phases:  # the saving, in every phase
        assert two_copies[phase.name].total - phase.total == pytest.approx(params * 2 / GiB)
    assert any("(15.3 GiB saved)" in n for n in plan.notes)
    assert rollout.items["vLLM share"] == pytest.approx(0.45 * 79)  # of the card planned for (79), not the 80 seen
    # r=64 on 7 projections of 36 layers: q (4096->4096), k and v (4096->1024), o (4096->4096),
    # gate and up (4096->12288), down (12288->4096); 16 bytes per trainable parameter
    fan = 36 * ((4096 + 4096) * 2 + (4096 + 1024) * 2 + (4096 + 12288) * 3)
    assert rollout.items["policy LoRA+AdamW"] == pytest.approx(64 * fan * 16 / GiB)
    training = {p.name: p for p in plan.phases}["policy training"]
    tokens = config.train.micro_batch_rows * (config.model.max_prompt_tokens + config.rollout.max_new_tokens)
    # 18,432 tokens x 151,936 entries is over one chunk: one chunk of 2^26 logits at 2 + 16 bytes
    assert tokens * 151936 > 2**26 and training.items["logits"] == pytest.approx(2**26 * (2 + 16) / GiB)


def test_static_decoding_plans_its_bucket_and_graphs_keep_their_cache_in_every_phase():
    """rollout.decode=static preallocates the KV cache for the bucket of the step's rows
    (static_decode.bucket; finished rows move within it, no second cache), and graphs keep one such
    cache, its length rounded up to 256, in every phase."""
    from tempo_bench.rollout.static_decode import bucket

    overrides = ["rollout.backend=hf", "train.prompts_per_step=15", "rollout.n=8"]
    plans = {d: {p.name: p for p in plan_memory(load_config("qwen3-0.6b-math500", overrides + [f"rollout.decode={d}"]),
                                                cuda_gpus=1, card_gb=80.0).phases} for d in ("eager", "static", "graphs")}
    config = load_config("qwen3-0.6b-math500", overrides)
    rows, seq = config.step_shape().sampled_rows, config.model.max_prompt_tokens + config.rollout.max_new_tokens
    assert (rows, bucket(rows)) == (184, 192)  # 15 x 8 + 8 x 8 labeled rows
    eager, static = (plans[d]["rollout"].items["KV cache"] for d in ("eager", "static"))
    assert static / eager == pytest.approx(192 / 184)
    kept = plans["graphs"]["policy training"].items["kept KV cache (graphs)"]
    assert kept / eager == pytest.approx(192 * (-(-seq // 256) * 256) / (184 * seq))
    assert "KV cache" not in plans["graphs"]["rollout"].items  # counted once, as the kept cache


def test_a_smaller_visible_card_is_what_counts():
    # the 14B preset with two copies of its base, sized for an H200 (139 GiB)
    config = load_config("qwen3-14b-aime24", ["critic.share_base=false", "model.gpu_memory_gb=139"])
    assert plan_memory(config, cuda_gpus=0).fits()
    small = plan_memory(config, cuda_gpus=1, card_gb=80.0)
    assert small.card_gb == 80.0 and not small.fits()
    assert any("rollout needs" in n for n in small.problems())


@pytest.mark.skipif(not DATA.is_dir(), reason=f"benchmark files not found at {DATA}")
def test_a_run_that_cannot_fit_stops_before_any_work(tmp_path, capsys):
    """The 14B preset with two copies of its base on an 80 GB card, with every input present here (the model's config from
    the shipped copy, AIME and GSM8K from ../shared/data): one error with the plan, no output."""
    from tempo_bench.commands.cli import main

    task = (f"task={{name: aime24, source: {DATA}/ttrl/AIME-TTT.json, labeled: gsm8k_train, "
            f"labeled_source: {DATA}/gsm8k/train.jsonl, labeled_size: 64}}")
    assert main(["run", "--preset", "qwen3-14b-aime24", "--set", "critic.share_base=false", "--set", task,
                 "--set", "eval.tasks=[]",  # AIME 2025 would come from the hub
                 "--set", f"model.path={SHIPPED_CONFIGS / 'Qwen--Qwen3-14B'}", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: memory plan") and "does not fit: rollout needs" in err
    assert "rollout.vllm.gpu_memory_utilization" in err and not (tmp_path / "out").exists()


def test_dry_run_prints_the_plan_and_plan_settings_leave_the_identity_alone(capsys, monkeypatch):
    from tempo_bench.commands.cli import main
    from tempo_bench.run import memory_plan

    monkeypatch.setattr(memory_plan, "_visible_card", lambda: (0, None))  # whatever this machine has
    assert main(["run", "--preset", "qwen3-8b-math500", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "memory plan: 1 GPU(s) of 79 GiB" in out and "fits in 79 GiB" in out
    config = load_config("qwen3-8b-math500")
    changed = load_config("qwen3-8b-math500", ["model.gpu_memory_gb=141", "model.max_prompt_tokens=2048"])
    assert config_identity(config) == config_identity(changed)


def test_data_parallel_ranks_each_hold_their_share_of_the_rollouts():
    config = load_config("qwen3-1.7b-gsm8k", ["rollout.backend=hf", "rollout.seeding=question"])
    whole = {p.name: p for p in plan_memory(config, cuda_gpus=1, card_gb=80.0, ranks=1).phases}["rollout"]
    shared = plan_memory(config, cuda_gpus=1, card_gb=80.0, ranks=4)
    quarter = {p.name: p for p in shared.phases}["rollout"]
    assert quarter.items["KV cache"] == pytest.approx(whole.items["KV cache"] / 4)  # 320 sequences, 80 per rank
    assert quarter.items["policy weights"] == whole.items["policy weights"]  # every rank holds a replica
    assert any("each of 4 ranks samples 80" in n for n in shared.notes)


@pytest.mark.parametrize("method,rows", [
    ("labeled_rlvr", 8 * 4),  # 8 labeled questions, no unlabeled ones (the plan counted 8 + 8: 64 rows)
    ("tempo", (8 + 2) * 4),  # 8 unlabeled + 2 labeled
    ("standard_ttt", 8 * 8),  # n_vote 8: every sample votes, 4 of each question train
])
def test_the_plans_kv_cache_counts_the_rows_the_method_samples(method, rows):
    """The memory plan reads the step's shape from the method (StepShape), as the run does: its
    KV cache holds the rows the run samples, and the run's first step samples exactly those."""
    config = load_config("toy-smoke", [f"method={method}", "rollout.merge_lora=false"])
    shape = config.step_shape()
    assert shape.sampled_rows == rows
    plan = plan_memory(config, cuda_gpus=0)
    rollout = {p.name: p for p in plan.phases}["rollout"]
    seq = config.model.max_prompt_tokens + config.rollout.max_new_tokens
    per_token = model_shape("toy").kv_bytes_per_token(4)
    assert rollout.items["KV cache"] == pytest.approx(per_token * seq * rows / GiB)


def test_micro_batch_tokens_set_the_training_pass_size():
    config = load_config("qwen3-8b-aime24")
    seq = config.model.max_prompt_tokens + config.rollout.max_new_tokens
    phases = lambda c: {p.name: p for p in plan_memory(c, cuda_gpus=1, card_gb=80.0).phases}["policy training"]
    by_rows = phases(config)  # micro_batch_rows=1: one full-length row per pass
    packed = phases(load_config("qwen3-8b-aime24", [f"train.micro_batch_tokens={4 * seq}"]))
    short = phases(load_config("qwen3-8b-aime24", ["train.micro_batch_tokens=16"]))  # rows longer than it go alone
    assert config.train.micro_batch_rows == 1
    assert packed.items["activations"] == pytest.approx(4 * by_rows.items["activations"], rel=0.01)
    assert short.items["activations"] == pytest.approx(by_rows.items["activations"])
