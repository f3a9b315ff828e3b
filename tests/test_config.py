"""Config loading: presets, dotted overrides, and errors that name the field and the fix."""

import pytest

from tempo_bench.config import apply_override, flatten, load_config, preset_names
from tempo_bench.core.errors import ConfigError


def test_presets_load_and_overrides_apply():
    assert {"toy", "toy-smoke"} <= set(preset_names())
    cfg = load_config("toy-smoke", ["train.lr=3e-4", "rollout.n=2", "methods.standard_ttt.n_vote=6"])
    assert cfg.train.lr == 3e-4 and cfg.rollout.n == 2
    assert cfg.method_options().n_vote == 6
    assert cfg.preset == "toy-smoke"


def test_unknown_key_names_field_and_suggests():
    with pytest.raises(ConfigError, match=r"unknown key 'train.lrr' \(did you mean 'lr'\?\)"):
        load_config("toy-smoke", ["train.lrr=1"])


def test_invalid_value_names_field_and_value():
    with pytest.raises(ConfigError, match=r"train.lr: .*greater than 0.*-1"):
        load_config("toy-smoke", ["train.lr=-1"])
    with pytest.raises(ConfigError, match=r"train.loss: Input should be 'ppo' or 'gspo'"):
        load_config("toy-smoke", ["train.loss=sgd"])
    with pytest.raises(ConfigError, match="test_digits must list digit counts between 1 and 6"):
        load_config("toy-smoke", ["task.test_digits=[9]"])


def test_unknown_preset_and_method():
    with pytest.raises(ConfigError, match=r"unknown preset 'toy-smok' \(did you mean 'toy-smoke'\?\)"):
        load_config("toy-smok")
    with pytest.raises(ConfigError, match=r"unknown method 'standard'.*available: .*standard_ttt"):
        load_config("toy-smoke", ["method=standard"])


def test_method_options_are_validated():
    with pytest.raises(ConfigError, match=r"unknown key 'methods.standard_ttt.n_votes'"):
        load_config("toy-smoke", ["methods.standard_ttt.n_votes=4"])
    with pytest.raises(ConfigError, match=r"methods.standard_ttt.n_vote: .*greater than or equal to 1"):
        load_config("toy-smoke", ["methods.standard_ttt.n_vote=0"])


def test_malformed_override():
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        load_config("toy-smoke", ["train.lr"])
    data = {"train": 3}
    with pytest.raises(ConfigError, match="is a value, not a section"):
        apply_override(data, "train.lr=1")


def test_preset_file_path(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("train: {steps: 2}\n")
    cfg = load_config(str(path))
    assert cfg.train.steps == 2 and cfg.preset == "mine"
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(str(tmp_path / "nope.yaml"))


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": [1, 2]}}, "e": {}}) == {"a.b": 1, "a.c.d": [1, 2], "e": {}}


def test_critic_method_without_labeled_questions_is_refused():
    with pytest.raises(ConfigError, match=r"method 'tempo' needs labeled questions, but task.labeled_size=0"):
        load_config("toy-smoke", ["method=tempo", "task.labeled_size=0"])
    with pytest.raises(ConfigError, match=r"'labeled_rlvr' needs labeled questions"):
        load_config("toy-smoke", ["method=labeled_rlvr", "task.labeled_size=0"])
    assert load_config("toy-smoke", ["method=standard_ttt", "task.labeled_size=0"]).task.labeled_size == 0


def test_settings_valid_alone_but_not_together():
    with pytest.raises(ConfigError, match=r"n_vote \(2\) must be >= rollout.n \(4\)"):
        load_config("toy-smoke", ["methods.standard_ttt.n_vote=2"])


def test_paper_presets_validate_for_every_method():
    from tempo_bench.config import preset_names
    from tempo_bench.methods.catalog import method_names

    names = preset_names()
    assert {"qwen3-8b-aime24", "qwen3-14b-aime24", "olmo3-7b-aime24", "qwen3-32b-aime24"} <= set(names)
    assert not [n for n in names if n.startswith("_")]  # bases are not listed as presets
    for name in names:
        for method in method_names():
            config = load_config(name, [f"method={method}"])
            assert config.method == method


def test_preset_base_merges_section_by_section(tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("base: qwen3-8b-aime24\ntrain: {lr: 3.0e-5}\n")
    config = load_config(str(child))
    assert config.train.lr == 3e-5 and config.train.loss == "gspo"  # the rest of train is the base's
    assert config.model.path == "Qwen/Qwen3-8B" and config.model.dtype == "bfloat16"
    loop = tmp_path / "loop.yaml"
    loop.write_text(f"base: {loop}\n")
    with pytest.raises(ConfigError, match="circular base chain"):
        load_config(str(loop))


def test_real_task_config_errors_name_the_field():
    with pytest.raises(ConfigError, match=r"unknown key 'task.test_size'.*allowed here: name, source"):
        load_config("toy-smoke", ["task.name=aime24"])  # toy-smoke's test_size is not a real-task key
    with pytest.raises(ConfigError, match="graded differently"):
        load_config("qwen3-8b-aime24", ["task.name=gpqa"])  # GPQA letters against a DAPO maths pool
    with pytest.raises(ConfigError, match=r"task.name: .*unknown task 'aime2' \(did you mean 'aime25'\?\).*or a task file"):
        load_config("qwen3-8b-aime24", ["task.name=aime2"])


def test_evaluation_length_and_top_p_apart_from_training():
    """eval.max_new_tokens and eval.top_p: evaluation samples as set (the backend is asked for
    them), vLLM's context covers the longer response, and they are part of the run's identity."""
    import torch

    from tempo_bench.config import config_identity
    from tempo_bench.policy.model import load_policy, load_tokenizer
    from tempo_bench.rollout import get_backend
    from tempo_bench.run.evaluation import evaluate
    from tempo_bench.tasks import load_task_data

    plain = load_config("toy-smoke")
    assert plain.eval_max_new_tokens() == 80 and plain.vllm_context_len(10) == 90
    assert config_identity(plain) == config_identity(load_config("toy-smoke", ["eval.top_p=1.0"]))
    longer = load_config("toy-smoke", ["eval.max_new_tokens=120", "eval.top_p=0.95"])
    assert longer.eval_max_new_tokens() == 120 and longer.vllm_context_len(10) == 130
    assert config_identity(longer) != config_identity(plain)

    hf = get_backend("hf")(load_policy(plain.model, plain.lora), load_tokenizer("toy"))
    asked = []

    class Recording:  # the hf backend, recording what evaluation asks of it
        def generate(self, prompts, sampling):
            asked.append(sampling)
            return hf.generate(prompts, sampling)

    task = load_task_data(plain.task)
    torch.manual_seed(0)
    evaluate(Recording(), task.test[:2], task.answer_key, longer.eval, longer.eval_max_new_tokens())
    sampled, greedy = asked
    assert (sampled.top_p, sampled.max_new_tokens, sampled.n) == (0.95, 120, 4)
    assert greedy.greedy and greedy.max_new_tokens == 120


def test_aime_presets_carry_the_released_scripts_settings():
    """TEMPO's run_em_*_aime.sh (@dbf313c) where one GPU allows: lengths, samples, clipping,
    optimiser steps, evaluation protocol, Qwen3's default (thinking) chat template; and TTRL's
    aime.sh protocol in its own preset."""
    for name in ("qwen3-8b-aime24", "qwen3-14b-aime24", "olmo3-7b-aime24"):
        c = load_config(name)
        assert (c.model.max_prompt_tokens, c.rollout.max_new_tokens, c.rollout.n) == (2048, 16384, 8)
        assert (c.rollout.temperature, c.rollout.top_p, c.train.loss, c.train.clip_low, c.train.clip_high) == \
            (1.0, 1.0, "gspo", 3e-4, 5e-4)
        assert (c.train.minibatches, c.eval.every, c.eval.k, c.eval.temperature, c.eval.top_p) == (4, 4, 16, 1.0, 1.0)
        assert "enable_thinking" not in c.model.chat_template_kwargs
        assert [t.name for t in c.eval.tasks] == ["aime25"]  # evaluated beside AIME 2024, as released
    ttrl = load_config("qwen3-8b-aime24-ttrl")
    assert ttrl.method == "standard_ttt" and ttrl.method_options().n_vote == 64 and ttrl.rollout.n == 32
    assert (ttrl.model.max_prompt_tokens, ttrl.rollout.max_new_tokens, ttrl.train.prompts_per_step) == (512, 3072, 8)
    assert (ttrl.eval.every, ttrl.eval.k, ttrl.eval.temperature, ttrl.eval.top_p) == (2, 16, 0.6, 0.95)


def test_what_each_setting_changes_is_read_from_the_field():
    """One fact per field (tempo_bench/core/effects.py): the run identity holds the settings that
    change the numbers, cache keys also the ones that change only the speed, and a resume may
    change what the field allows."""
    from tempo_bench.config import config_identity
    from tempo_bench.core.effects import NOTHING, NUMBERS, SPEED, computed_by, fixed_for_resume, settings

    config = load_config("toy-smoke", ["method=tempo"])
    effects = {path: kind for path, (_, kind, _) in settings(config).items()}
    assert set(effects.values()) == {NUMBERS, SPEED, NOTHING}
    assert effects["train.lr"] == effects["rollout.seeding"] == effects["methods"] == NUMBERS
    assert effects["lora.fused"] == effects["threads"] == effects["rollout.vllm.sleep"] == SPEED  # a section's own
    assert effects["out"] == effects["eval.collapse_tolerance"] == effects["model.gpu_memory_gb"] == NOTHING

    def identity(*overrides):
        return config_identity(load_config("toy-smoke", ["method=tempo", *overrides]))

    assert identity() == identity("lora.fused=false", "threads=1", "out=elsewhere", "train.checkpoint_every=3",
                                  "critic.share_base=false", "rollout.vllm.sleep=false", "model.gpu_memory_gb=40")
    assert identity() != identity("train.lr=1e-3") != identity("train.steps=7") != identity("eval.every=3")
    critic_sections = ("critic", "lora")
    assert "lora.fused" in computed_by(config, *critic_sections) and "out" not in computed_by(config, "out")
    assert not fixed_for_resume(config, "train.steps") and not fixed_for_resume(config, "lora.fused")
    assert fixed_for_resume(config, "train.lr") and fixed_for_resume(config, "log.tracking_uri")
    assert fixed_for_resume(config, "methods.tempo.recal_interval"), "inside the `methods` setting"
    assert fixed_for_resume(config, "a.field.since.removed")
