"""The vllm backend's own logic where vLLM is not installed (the main suite): a recording stand-in
for the engine (clearly not vLLM: it answers from the hf backend) checks what the backend asks of
it: a fresh LoRA adapter and id after each sync, the old adapter folder removed, the engine woken
for work and put back to sleep, merged weights named as the base checkpoint, and vLLM-shaped
outputs turned into a Generation. The real engine is tested by tests/test_vllm.py (marked vllm):
in CI's vLLM stage on vLLM's CPU build, and by scripts/gpu_check_vllm.sh on a GPU."""

import sys
import types
from pathlib import Path

import pytest
import torch

from tempo_bench.config import LoraConfig, ModelConfig, VLLMConfig
from tempo_bench.policy.model import load_policy, load_tokenizer
from tempo_bench.rollout import SamplingParams, get_backend
from tempo_bench.rollout.vllm import VLLMBackend


class RecordingEngine:
    """Answers generate() like vLLM's LLM (RequestOutput-shaped objects) from the hf backend."""

    def __init__(self, hf_backend):
        self.hf, self.calls, self.loaded = hf_backend, [], []

    def generate(self, prompts, params, lora_request=None, use_tqdm=False):
        self.calls.append(("generate", lora_request.lora_int_id if lora_request else None))
        texts = [self.hf.tokenizer.decode(p["prompt_token_ids"]) for p in prompts]
        params = params[0] if isinstance(params, list) else params  # one per prompt where seeded: alike but for the seed
        gen = self.hf.generate(texts, SamplingParams(n=params.n, greedy=params.temperature == 0,
                                                     temperature=params.temperature or 1.0,
                                                     max_new_tokens=params.max_tokens))
        out = []
        for i in range(gen.num_prompts):
            samples = [types.SimpleNamespace(
                token_ids=gen.token_ids[r], finish_reason="stop" if gen.finished[r] else "length",
                logprobs=[{t: types.SimpleNamespace(logprob=lp)} for t, lp in zip(gen.token_ids[r], gen.logprobs[r])])
                for r in gen.group(i)]
            out.append(types.SimpleNamespace(prompt_token_ids=gen.prompt_ids[i], outputs=samples))
        return out

    def sleep(self, level):
        self.calls.append(("sleep", level))

    def wake_up(self):
        self.calls.append(("wake", None))

    def collective_rpc(self, method, kwargs=None):
        assert method == "reload_weights" and kwargs["is_checkpoint_format"]
        self.loaded.append(dict(kwargs["weights_iterator"]))

    def reset_prefix_cache(self):
        self.calls.append(("reset_prefix_cache", None))


@pytest.fixture
def stand_in_vllm(monkeypatch):
    """A `vllm` module with the two names the backend imports per call."""
    module = types.ModuleType("vllm")
    module.SamplingParams = lambda **kw: types.SimpleNamespace(**{"n": 1, "temperature": 1.0, **kw})
    lora = types.ModuleType("vllm.lora.request")
    lora.LoRARequest = lambda name, id_, path: types.SimpleNamespace(lora_name=name, lora_int_id=id_, lora_path=path)
    monkeypatch.setitem(sys.modules, "vllm", module)
    monkeypatch.setitem(sys.modules, "vllm.lora", types.ModuleType("vllm.lora"))
    monkeypatch.setitem(sys.modules, "vllm.lora.request", lora)


def backend(sync: str, tmp_path: Path):
    tokenizer = load_tokenizer("toy")
    policy = load_policy(ModelConfig(), LoraConfig())
    engine = RecordingEngine(get_backend("hf")(policy, tokenizer, merge_lora=False))
    return VLLMBackend(policy, tokenizer, engine, VLLMConfig(sync=sync), tmp_path / "adapters"), engine


def test_lora_sync_serves_a_fresh_adapter_and_sleeps_between_calls(stand_in_vllm, tmp_path):
    vb, engine = backend("lora", tmp_path)
    assert vb.lora_request.lora_int_id == 1 and Path(vb.lora_request.lora_path, "adapter_config.json").is_file()
    first = vb.lora_request.lora_path
    vb.sync_weights()
    assert vb.lora_request.lora_int_id == 2 and not Path(first).exists()  # vLLM caches by id: a new one
    torch.manual_seed(0)
    gen = vb.generate(["Q:347+285\n", "Q:12+9\n"], SamplingParams(n=3, max_new_tokens=60))
    assert engine.calls == [("generate", 2), ("sleep", 1)]  # awake from the start: no wake needed
    assert gen.num_prompts == 2 and len(gen.token_ids) == 6
    assert all(len(ids) == len(lps) for ids, lps in zip(gen.token_ids, gen.logprobs))
    assert gen.texts[0] == vb.tokenizer.decode(gen.token_ids[0], skip_special_tokens=True)
    vb.generate(["Q:1+1\n"], SamplingParams(n=1, max_new_tokens=20))
    assert engine.calls[-3:] == [("wake", None), ("generate", 2), ("sleep", 1)]
    vb.close()
    assert not (tmp_path / "adapters").exists()


def test_merged_sync_streams_a_whole_checkpoint_and_resets_the_prefix_cache(stand_in_vllm, tmp_path):
    """vLLM's reload_weights gets every weight of the model named as in the base checkpoint (the
    LoRA-targeted ones merged), as a stream, then the prefix cache is reset."""
    vb, engine = backend("merged", tmp_path)
    assert len(engine.loaded) == 1
    names = set(engine.loaded[0])
    base = {n for n, _ in vb.policy.get_base_model().named_parameters()}
    assert {n.replace(".base_layer", "") for n in base if "lora_" not in n} == names
    assert "model.layers.0.self_attn.q_proj.weight" in names and "model.norm.weight" in names
    assert not any("lora" in n or "base_layer" in n for n in names)
    assert ("reset_prefix_cache", None) in engine.calls
