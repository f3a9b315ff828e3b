"""The shipped toy checkpoint matches its manifest, and the build is deterministic."""

import json

from tempo_bench.tasks.addition import data_hash
from tempo_bench.toy.model import (
    SHIPPED_DIR,
    ToyModelSpec,
    build,
    corpus_of,
    weights_hash,
)

MANIFEST = json.loads((SHIPPED_DIR / "manifest.json").read_text())


def test_shipped_weights_and_data_match_manifest():
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(SHIPPED_DIR)
    assert weights_hash(model) == MANIFEST["weights_hash"]
    assert model.config.model_type == "llama"
    spec = ToyModelSpec(**{**MANIFEST["spec"], "corpus_digits": tuple(MANIFEST["spec"]["corpus_digits"])})
    assert spec == ToyModelSpec(), "the default spec is the one the shipped model was built from"
    assert data_hash(corpus_of(spec)) == MANIFEST["data_hash"]
    assert (SHIPPED_DIR / "model.safetensors").stat().st_size < 20 * 2**20


def test_shipped_base_policy_is_imperfect_in_the_planted_way():
    s = MANIFEST["scores"]
    assert 0.3 < s["mean_at_8"] < 0.8
    assert s["mean_at_8_chain"] < 0.4 < s["mean_at_8_no_chain"]  # systematic errors
    assert s["maj_at_8"] < s["pass_at_8"]


def test_build_is_deterministic(tmp_path):
    spec = ToyModelSpec(steps=3, corpus_size=200, batch_size=8, warmup_steps=1)
    a = build(tmp_path / "a", spec, show_progress=False)
    b = build(tmp_path / "b", spec, show_progress=False)
    assert a["weights_hash"] == b["weights_hash"] and a["data_hash"] == b["data_hash"]
    assert build(tmp_path / "c", ToyModelSpec(**{**spec.__dict__, "seed": 1}), show_progress=False)[
        "weights_hash"] != a["weights_hash"]


def test_shipped_critic_backbone_matches_its_manifest():
    from transformers import AutoModelForCausalLM

    from tempo_bench.toy.model import CRITIC_BASE_DIR, critic_backbone_spec

    manifest = json.loads((CRITIC_BASE_DIR / "manifest.json").read_text())
    spec = ToyModelSpec(**{**manifest["spec"], "corpus_digits": tuple(manifest["spec"]["corpus_digits"])})
    assert spec == critic_backbone_spec() and manifest["data_hash"] == MANIFEST["data_hash"], "same corpus"
    model = AutoModelForCausalLM.from_pretrained(CRITIC_BASE_DIR)
    assert weights_hash(model) == manifest["weights_hash"]
    assert manifest["num_parameters"] > 3 * MANIFEST["num_parameters"]
