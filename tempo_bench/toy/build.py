"""`tempo-bench toy-model build`: pretrain and score the policy's base and the critic's backbone,
then the RLVR stage and its measurements (the manifest of every TTT run's starting point)."""

from __future__ import annotations

from pathlib import Path

import torch

from tempo_bench.config import EvalConfig, ToyTaskConfig, load_config
from tempo_bench.core import metrics as M
from tempo_bench.experiments.probe import probe_asymmetry
from tempo_bench.policy.model import load_tokenizer
from tempo_bench.rollout.hf import HFBackend
from tempo_bench.run.evaluation import evaluate
from tempo_bench.tasks import load_task_data
from tempo_bench.tasks.toy import toy_test_questions
from tempo_bench.toy.model import (
    SHIPPED_DIR,
    ToyModelSpec,
    _portable_tokenizer_config,
    build,
    weights_hash,
)
from tempo_bench.toy.rlvr import run_rlvr
from tempo_bench.toy.verifier import (
    corpus_texts,
    encode_verification,
    verdict_token_ids,
    verification_corpus,
)


def score_checkpoint(model_dir: Path, k: int = 8, max_new_tokens: int = 96, seed: int = 0) -> dict:
    """Greedy accuracy, mean@k, maj@k and pass@k of the checkpoint on the default toy test set
    (ToyTaskConfig defaults), also split by whether the question has a chain carry."""
    from transformers import AutoModelForCausalLM

    config = ToyTaskConfig()
    task = load_task_data(config)
    chain = {q.prompt: q.has_chain_carry for q in toy_test_questions(config)}
    backend = HFBackend(AutoModelForCausalLM.from_pretrained(model_dir), load_tokenizer(str(model_dir)))
    torch.manual_seed(seed)
    values, rows, _ = evaluate(backend, task.test, task.answer_key, EvalConfig(k=k), max_new_tokens, task.grader)
    scores = {
        "test_questions": len(task.test),
        "greedy_acc": values["eval/greedy_acc"],
        f"mean_at_{k}": values["eval/mean_at_k"],
        f"maj_at_{k}": values["eval/maj_at_k"],
        f"pass_at_{k}": values["eval/pass_at_k"],
        "distinct_answers": values["eval/distinct_answers"],
    }
    for want, name in ((True, "chain"), (False, "no_chain")):
        sampled = [r["correct"] for r in rows if not r["greedy"] and chain[r["prompt"]] == want]
        scores[f"mean_at_{k}_{name}"] = sum(sampled) / max(1, len(sampled))
    return {name: round(v, 4) if isinstance(v, float) else v for name, v in scores.items()}


def build_and_score(out_dir: Path, spec: ToyModelSpec, show_progress: bool = True) -> dict:
    return build(out_dir, spec, score_fn=lambda d: score_checkpoint(d, **spec.eval), show_progress=show_progress)


def build_verifier(out_dir: Path, spec, show_progress: bool = True, probe_rounds: int | None = 4) -> dict:
    """The verifier backbone (tempo_bench/toy/verifier.py): pretrained on the verification corpus,
    scored on held-out corpus examples by its verdict (AUROC of logit(Y) - logit(N)), then probed
    as the `toy` preset's critic before any TTT run (the manifest's ``probe``)."""
    import json
    from dataclasses import asdict

    data = verification_corpus(spec)
    held_out = verification_corpus(type(spec)(**{**asdict(spec), "seed": spec.seed + 1, "corpus_size": 512}))

    def corpus(tokenizer):
        return corpus_texts(data, spec.verdict_tokens), encode_verification(data, tokenizer, spec.verdict_tokens)

    coverage = {"corpus_digits": list(spec.corpus_digits), "error_kinds": list(spec.error_kinds),
                "wrong_share": round(sum(not ok for *_, ok in data) / len(data), 4),
                "verdict_tokens": spec.verdict_tokens, "verdict_position": "after the response's EOS token"}
    manifest = build(out_dir, spec, score_fn=lambda d: score_verifier(d, held_out, spec.verdict_tokens),
                     show_progress=show_progress, corpus=corpus,
                     extra={"stage": "verifier-pretrain", "covers": coverage,
                            "excluded_test_questions_of": list(spec.exclude_presets)})
    if probe_rounds is None:  # a test build: no probe
        return manifest
    manifest["probe"] = probe_preset("toy", [f"critic.path={out_dir}"], probe_rounds, show_progress)
    manifest["probe_preset"] = "toy"
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def probe_preset(preset: str, overrides: list[str], rounds: int, show_progress: bool) -> dict:
    """`tempo-bench probe` on a preset before any TTT run, on one thread (what a manifest records)."""
    import tempfile

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with tempfile.TemporaryDirectory() as scratch:  # the probe's E-steps train a copy: nothing to keep
            config = load_config(preset, [*overrides, f"out={scratch}", "threads=1"])
            return probe_asymmetry(config, k=8, estep_rounds=rounds, progress=show_progress)
    finally:
        torch.set_num_threads(threads)


@torch.no_grad()
def score_verifier(model_dir: Path, examples, verdicts: dict) -> dict:
    """Verdict AUROC and accuracy (logit(Y) > logit(N)) on labelled worked solutions."""
    import numpy as np
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    yes, no = verdict_token_ids(tokenizer, verdicts)
    scores = []
    for i in range(0, len(examples), 128):
        chunk = examples[i:i + 128]
        ids = [tokenizer(p + t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id] for p, t, _ in chunk]
        width = max(map(len, ids))
        input_ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(r)) + r for r in ids])
        attention = (torch.arange(width)[None] >= torch.tensor([width - len(r) for r in ids])[:, None]).long()
        positions = (attention.cumsum(1) - 1).clamp(min=0)
        logits = model(input_ids=input_ids, attention_mask=attention, position_ids=positions).logits[:, -1]
        scores += (logits[:, yes] - logits[:, no]).tolist()
    truth = np.array([ok for *_, ok in examples])
    scores = np.array(scores)
    return {"held_out_examples": len(examples), "verdict_auroc": round(M.auroc(scores, truth), 4),
            "verdict_accuracy": round(float(((scores > 0) == truth).mean()), 4)}


def build_rlvr(out_dir: Path, spec, preset: str = "toy-symmetric", base_dir: Path | None = None,
               critic_base_dir: Path | None = None, probe_rounds: int = 4, show_progress: bool = True) -> dict:
    """The RLVR stage (tempo_bench/toy/rlvr.py) from the pretrained checkpoint on the labeled pool of
    ``preset``'s task; writes ``actor/``, ``critic/`` and ``manifest.json`` to ``out_dir``, the
    manifest with what `tempo-bench probe` measures on the result (the asymmetry TTT needs)."""
    import json
    import time
    from dataclasses import asdict

    base_dir = Path(base_dir or SHIPPED_DIR)
    config = load_config(preset)
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)  # bitwise determinism, as in pretraining
    torch.use_deterministic_algorithms(True)
    start = time.perf_counter()
    try:
        actor, critic, trajectory = run_rlvr(base_dir, spec, config.task, show_progress, critic_base_dir)
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)
    seconds = time.perf_counter() - start
    actor_dir, critic_dir = out_dir / "actor", out_dir / "critic"
    actor.save_pretrained(actor_dir, safe_serialization=True)
    load_tokenizer(str(base_dir)).save_pretrained(actor_dir)
    _portable_tokenizer_config(actor_dir)
    critic.save(critic_dir)
    (critic_dir / "optimizer.pt").unlink()  # TTT starts a fresh optimiser with its own lr
    probe = probe_preset(preset, [f"model.path={actor_dir}", f"critic.init={critic_dir}"], probe_rounds,
                         show_progress)
    manifest = {
        "stage": "rlvr",
        "spec": asdict(spec),
        "task": config.task.model_dump(),
        "preset": preset,
        "base_weights_hash": json.loads((base_dir / "manifest.json").read_text())["weights_hash"],
        "critic_base_weights_hash": json.loads(((critic_base_dir or base_dir) / "manifest.json").read_text())[
            "weights_hash"],
        "actor_weights_hash": weights_hash(actor),
        "critic_weights_hash": weights_hash(critic.model),
        "trajectory": trajectory,
        "probe": probe,
        "torch_version": torch.__version__,
        "build_seconds": round(seconds, 1),
        "rebuild": "tempo-bench toy-model build --stage rlvr (after the pretrain stages)",
    }
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest
