"""The verifier regime's critic: the verification corpus, the shipped verifier backbone against its
manifest, the verdict head, and the manifest's probe recomputed."""

import json
import random

import numpy as np
import pytest
import torch

from tempo_bench.tasks.addition import Addition, final_answer, solution
from tempo_bench.toy.model import VERIFIER_DIR, weights_hash
from tempo_bench.toy.verifier import (
    ERROR_KINDS,
    VerifierSpec,
    excluded_questions,
    verification_corpus,
    wrong_solution,
)

needs_verifier = pytest.mark.skipif(not (VERIFIER_DIR / "manifest.json").is_file(),
                                    reason="the verifier backbone is not built (tempo-bench toy-model build "
                                    "--stage verifier-pretrain)")


def test_planted_errors_change_the_answer_and_verdicts_follow_the_answer():
    rng = random.Random(0)
    q = Addition(451, 548)  # a chain carry: 1+8=9, 5+4=9 ... with a carry coming in
    for kinds in (("chain",), ("carry",), ("slip",), ERROR_KINDS):
        for _ in range(20):
            assert final_answer(wrong_solution(q, rng, kinds)) != q.answer
    assert final_answer(solution(Addition(347, 285), slip_at=0, slip_by=1)) == "633"
    corpus = verification_corpus(VerifierSpec(corpus_size=2000, corpus_digits=(2, 3)))
    assert all(ok == (final_answer(text) == str(eval(p[2:].strip()))) for p, text, ok in corpus)
    wrong = np.mean([not ok for *_, ok in corpus])
    assert 0.45 < wrong < 0.55


def test_corpus_holds_no_test_question_of_the_shipped_toy_presets():
    spec = VerifierSpec()
    corpus = verification_corpus(spec)
    test = excluded_questions(spec.exclude_presets)
    assert len(test) == 128
    assert not {p for p, _, _ in corpus} & {q.prompt for q in test}


@pytest.mark.parametrize("field,value,message", [
    ("error_kinds", ("chain", "typo"), "allowed: chain, carry, slip"),
    ("corpus_digits", (2, 7), "between 1 and 6"),
])
def test_bad_knobs_name_the_field_and_the_allowed_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        VerifierSpec(**{field: value})


def test_build_cli_rejects_unknown_knobs_before_any_work(capsys):
    from tempo_bench.commands.cli import main

    assert main(["toy-model", "build", "--stage", "verifier-pretrain", "--set", "verifier.error_kind=[chain]"]) == 2
    assert "unknown VerifierSpec field 'error_kind'" in capsys.readouterr().err


@needs_verifier
def test_shipped_verifier_is_its_manifest_and_the_default_build():
    from dataclasses import asdict

    from transformers import AutoModelForCausalLM

    manifest = json.loads((VERIFIER_DIR / "manifest.json").read_text())
    assert weights_hash(AutoModelForCausalLM.from_pretrained(VERIFIER_DIR)) == manifest["weights_hash"]
    spec = manifest["spec"]
    assert {k: tuple(v) if isinstance(v, list) else v for k, v in spec.items()} == asdict(VerifierSpec())
    assert manifest["covers"]["error_kinds"] == list(ERROR_KINDS)


@needs_verifier
def test_verdict_head_reads_the_verifiers_verdict_at_the_response_end():
    """V(complete response) = head_scale * (logit(Y) - logit(N)) of the verifier language model at
    the response's EOS, for a right and a wrong worked solution."""
    from transformers import AutoModelForCausalLM

    from tempo_bench.config import load_config
    from tempo_bench.critic.model import Critic
    from tempo_bench.policy.batch import make_train_batch
    from tempo_bench.policy.model import load_tokenizer

    cfg = load_config("toy").critic
    critic = Critic.from_pretrained("toy-verifier", cfg)
    lm = AutoModelForCausalLM.from_pretrained(VERIFIER_DIR).eval()
    tok = load_tokenizer("toy-verifier")
    q = Addition(459, 348)
    prompts, responses = [], []
    for text in (solution(q), solution(q, forget_chain_carry=True)):
        prompts.append(tok(q.prompt, add_special_tokens=False)["input_ids"])
        responses.append(tok(text, add_special_tokens=False)["input_ids"] + [tok.eos_token_id])
    _, final = critic.score(make_train_batch(prompts, responses, tok.pad_token_id))
    yes, no = tok.convert_tokens_to_ids("Y"), tok.convert_tokens_to_ids("N")
    with torch.no_grad():
        for i, (p, r) in enumerate(zip(prompts, responses)):
            logits = lm(input_ids=torch.tensor([p + r])).logits[0, -1]
            assert final[i].item() == pytest.approx(cfg.head_scale * (logits[yes] - logits[no]).item(), abs=1e-4)
    assert final[0] > 0 > final[1], "the verifier tells the right solution from the forgotten chain carry"


def test_presets_of_the_two_regimes():
    from tempo_bench.config import load_config

    verifier, symmetric = load_config("toy"), load_config("toy-symmetric")
    assert verifier.critic.path == "toy-verifier" and verifier.critic.head_init == "verdict"
    assert verifier.model.path == "toy" and verifier.task.labeled_chain_fraction == 0.0
    assert symmetric.model.path == "toy-rlvr" and symmetric.critic.init == "toy-rlvr"


@needs_verifier
def test_the_manifests_probe_is_reproduced():
    """The verifier regime's probe recomputed on 24 test questions with another seed: the policy's
    accuracy and both AUROC-within values agree with the manifest within noise, in the same order."""
    from tempo_bench.config import load_config
    from tempo_bench.experiments.probe import probe_asymmetry

    shipped = json.loads((VERIFIER_DIR / "manifest.json").read_text())["probe"]
    config = load_config("toy", ["eval.size=24", "seed=11", "threads=2", "critic.estep_questions=8"])
    got = probe_asymmetry(config, k=8, estep_rounds=1, progress=False)
    samples = got["questions"] * got["k"]
    tolerance = 4 * np.sqrt(max(shipped["policy"]["mean_at_k"] * (1 - shipped["policy"]["mean_at_k"]), 0.02)
                            / (samples // 4)) + 0.02
    assert abs(got["policy"]["mean_at_k"] - shipped["policy"]["mean_at_k"]) < tolerance
    critic, majority = got["critic_start"]["auroc_within"], got["majority_vote_auroc_within"]
    assert abs(critic - shipped["critic_start"]["auroc_within"]) < 0.15
    assert abs(majority - shipped["majority_vote_auroc_within"]) < 0.2
    assert (critic > majority) == (shipped["critic_start"]["auroc_within"] > shipped["majority_vote_auroc_within"])


def test_verifier_build_is_deterministic(tmp_path):
    from tempo_bench.toy.build import build_verifier

    spec = VerifierSpec(steps=3, corpus_size=200, batch_size=8)
    a = build_verifier(tmp_path / "a", spec, show_progress=False, probe_rounds=None)
    b = build_verifier(tmp_path / "b", spec, show_progress=False, probe_rounds=None)
    assert a["weights_hash"] == b["weights_hash"] and a["data_hash"] == b["data_hash"]
    assert a["covers"]["error_kinds"] == list(ERROR_KINDS) and 0.4 < a["covers"]["wrong_share"] < 0.6


@pytest.mark.parametrize("preset,asset,name,stage", [
    ("toy", "VERIFIER_DIR", "toy-verifier", "verifier-pretrain"),  # the critic's backbone
    ("toy", "SHIPPED_DIR", "toy", "pretrain"),  # the policy
    ("toy-symmetric", "RLVR_DIR", "toy-rlvr", "rlvr"),
])
def test_a_missing_shipped_checkpoint_names_the_build_stage(tmp_path, monkeypatch, capsys, preset, asset, name, stage):
    import tempo_bench.core.assets as assets
    from tempo_bench.commands.cli import main

    monkeypatch.setattr(assets, asset, tmp_path / "missing")
    assert main(["run", "--preset", preset, "--out", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    assert f"checkpoint {name!r} is missing" in err and f"tempo-bench toy-model build --stage {stage}" in err
    assert not (tmp_path / "runs" / "mlflow.db").exists()