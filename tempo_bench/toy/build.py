"""`tempo-bench toy-model build`: pretrain, then score the base policy on the toy test set."""

from __future__ import annotations

from pathlib import Path

import torch

from tempo_bench.toy.model import ToyModelSpec, build


def score_checkpoint(model_dir: Path, k: int = 8, max_new_tokens: int = 96, seed: int = 0) -> dict:
    """Greedy accuracy, mean@k, maj@k and pass@k of the checkpoint on the default toy test set
    (ToyTaskConfig defaults: the questions every toy preset trains and evaluates on), also split
    by whether the question has a chain carry."""
    from transformers import AutoModelForCausalLM

    from tempo_bench.config import EvalConfig, ToyTaskConfig
    from tempo_bench.evaluation import evaluate
    from tempo_bench.policy import load_tokenizer
    from tempo_bench.rollout.hf import HFBackend
    from tempo_bench.tasks import load_task_data
    from tempo_bench.toy.task import Addition, PROMPT_PREFIX

    task = load_task_data(ToyTaskConfig())
    tokenizer = load_tokenizer(str(model_dir))
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    backend = HFBackend(model, tokenizer)
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
    for chain in (True, False):
        sampled = [r for r in rows if not r["greedy"]
                   and _is_chain(r["prompt"], PROMPT_PREFIX, Addition) == chain]
        scores[f"mean_at_{k}_{'chain' if chain else 'no_chain'}"] = (
            sum(r["correct"] for r in sampled) / max(1, len(sampled))
        )
    return {name: round(v, 4) if isinstance(v, float) else v for name, v in scores.items()}


def _is_chain(prompt: str, prefix: str, cls) -> bool:
    a, b = prompt.strip()[len(prefix):].split("+")
    return cls(int(a), int(b)).has_chain_carry


def build_and_score(out_dir: Path, spec: ToyModelSpec, show_progress: bool = True) -> dict:
    return build(out_dir, spec, score_fn=score_checkpoint, show_progress=show_progress)
