"""The shipped RLVR starting point (actor + critic) against its manifest, and the stage's determinism."""

import json

import numpy as np
import pytest
import torch

from tempo_bench.toy.model import RLVR_DIR, weights_hash

MANIFEST = json.loads((RLVR_DIR / "manifest.json").read_text())


def test_shipped_weights_are_the_manifests():
    from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

    assert weights_hash(AutoModelForCausalLM.from_pretrained(RLVR_DIR / "actor")) == MANIFEST["actor_weights_hash"]
    critic = AutoModelForTokenClassification.from_pretrained(RLVR_DIR / "critic")
    assert weights_hash(critic) == MANIFEST["critic_weights_hash"]
    base = json.loads((RLVR_DIR.parent / "toy_model" / "manifest.json").read_text())
    assert MANIFEST["base_weights_hash"] == base["weights_hash"], "the RLVR stage ran on the shipped base"
    for part in ("actor", "critic"):
        assert sum(f.stat().st_size for f in (RLVR_DIR / part).iterdir()) < 8 * 2**20


def test_manifest_spec_is_the_default_build():
    from tempo_bench.toy.rlvr import RLVRSpec

    assert RLVRSpec(**MANIFEST["spec"]) == RLVRSpec(), "`tempo-bench toy-model build` rebuilds what is shipped"


def test_symmetric_preset_starts_from_the_shipped_rlvr_stage():
    from tempo_bench.config import load_config

    config = load_config("toy-symmetric")
    assert config.model.path == "toy-rlvr" and config.critic.init == "toy-rlvr"
    assert config.task.model_dump() == MANIFEST["task"], "the manifest was measured on the preset's task"


@pytest.fixture(scope="module")
def recomputed():
    """The manifest's probe recomputed on the first 24 test questions with fresh seeds: the
    starting policy's accuracy and the within-question AUROC of majority vote and of the critic."""
    from tempo_bench.config import load_config
    from tempo_bench.experiments.probe import probe_asymmetry

    config = load_config("toy-symmetric", ["eval.size=24", "seed=11", "threads=2", "critic.estep_questions=8"])
    return probe_asymmetry(config, k=8, estep_rounds=1, progress=False)


def _binomial_tolerance(p: float, n: int) -> float:
    return 4 * np.sqrt(max(p * (1 - p), 0.02) / n) + 0.02


def test_starting_policy_scores_match_the_manifest(recomputed):
    shipped, got = MANIFEST["probe"]["policy"], recomputed["policy"]
    samples = recomputed["questions"] * recomputed["k"]
    assert abs(got["mean_at_k"] - shipped["mean_at_k"]) < _binomial_tolerance(shipped["mean_at_k"], samples // 4)
    assert abs(got["maj_at_k"] - shipped["maj_at_k"]) < _binomial_tolerance(shipped["maj_at_k"], recomputed["questions"])


def test_the_asymmetry_the_manifest_records_is_reproduced(recomputed):
    """How the starting critic and majority vote rank a test question's answers (the reason the
    toy exists, whichever way it goes): the recomputed AUROCs are within noise of the manifest's,
    and order the two scores the same way."""
    shipped = MANIFEST["probe"]
    critic, majority = recomputed["critic_start"]["auroc_within"], recomputed["majority_vote_auroc_within"]
    assert abs(critic - shipped["critic_start"]["auroc_within"]) < 0.15
    assert abs(majority - shipped["majority_vote_auroc_within"]) < 0.1
    assert (critic > majority) == (shipped["critic_start"]["auroc_within"] > shipped["majority_vote_auroc_within"])
    assert abs(recomputed["critic_start"]["ece"] - shipped["critic_start"]["ece"]) < 0.15  # the transfer gap


def test_rlvr_stage_is_deterministic_and_trains(tmp_path):
    from tempo_bench.config import ToyTaskConfig
    from tempo_bench.toy.model import SHIPPED_DIR
    from tempo_bench.toy.rlvr import RLVRSpec, run_rlvr

    spec = RLVRSpec(steps=2, prompts_per_step=4, n=2, eval_every=2, eval_questions=4, eval_k=2, max_new_tokens=40)
    task = ToyTaskConfig(test_size=8, labeled_size=8, pool_size=32)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        runs = [run_rlvr(SHIPPED_DIR, spec, task, show_progress=False) for _ in range(2)]
    finally:
        torch.set_num_threads(threads)
    (actor_a, critic_a, traj_a), (actor_b, critic_b, traj_b) = runs
    assert weights_hash(actor_a) == weights_hash(actor_b) and weights_hash(critic_a.model) == weights_hash(critic_b.model)
    assert json.dumps(traj_a) == json.dumps(traj_b) and [p["step"] for p in traj_a] == [0, 2]  # NaN-aware
    from transformers import AutoModelForCausalLM

    assert weights_hash(actor_a) != weights_hash(AutoModelForCausalLM.from_pretrained(SHIPPED_DIR)), "the actor trained"
