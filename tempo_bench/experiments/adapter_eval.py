"""``tempo-bench eval``: evaluate a saved policy adapter on a task, with our own evaluation and,
with ``--lm-eval``, with lm-evaluation-harness on the very same questions, as an independent check.

lm-eval reads a task written here from our data (a JSONL file, a YAML task, a ``utils.py`` whose
``process_results`` calls the task's grader), generates greedily until EOS through its hf model
(``peft=`` the adapter), and scores each response; we compare its accuracy and its responses with
ours, question by question.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tempo_bench.config import EvalConfig, load_config
from tempo_bench.grading.answers import Grader
from tempo_bench.rollout.hf import HFBackend
from tempo_bench.run.evaluation import evaluate
from tempo_bench.tasks.base import AnswerKey, Question
from tempo_bench.tasks.real import get_task
from tempo_bench.tasks.toy import load_toy_task

TOY = "toy"


@dataclass
class EvalSet:
    name: str  # a task name (grader_by_name understands it)
    questions: list[Question]
    answer_key: AnswerKey
    grader: Grader


def load_eval_set(task: str, data: str | None, limit: int | None) -> EvalSet:
    """The test questions of ``task``: 'toy' (the 64 test questions of the `toy` preset, where its
    runs train) or a real benchmark from ``data`` (a local file) or the hub."""
    if task == TOY:
        toy = load_toy_task(load_config("toy").task)
        questions = toy.test[:limit] if limit else toy.test
        return EvalSet("toy", questions, toy.answer_key, toy.grader)

    real = get_task(task)
    rows = real.load(data, limit=limit)
    ids = [f"test-{q.id}" for q in rows]
    return EvalSet(real.name, [Question(i, q.prompt) for i, q in zip(ids, rows)],
                   AnswerKey({i: q.answer for i, q in zip(ids, rows)}, real), real)


def adapter_base(adapter: Path) -> str:
    """The base model an adapter was trained on (adapter_config.json)."""
    config_file = adapter / "adapter_config.json"
    if not config_file.is_file():
        raise ValueError(f"{adapter} is not a peft adapter folder (no adapter_config.json); runs save "
                         "theirs under <out>/<experiment>/<run>/adapter")
    return json.loads(config_file.read_text())["base_model_name_or_path"]


def load_adapter_policy(adapter: Path, base: str, dtype: str, device: str):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=getattr(torch, dtype))
    return PeftModel.from_pretrained(model, adapter).to(device).eval()


def our_eval(policy, tokenizer, eval_set: EvalSet, render, k: int, max_new_tokens: int, seed: int):
    """Our evaluation: (metrics, greedy responses in question order)."""
    import torch

    questions = [Question(q.id, render(q.prompt)) for q in eval_set.questions] if render else eval_set.questions
    torch.manual_seed(seed)
    values, rows, _ = evaluate(HFBackend(policy, tokenizer), questions, eval_set.answer_key,
                               EvalConfig(k=k, greedy=True), max_new_tokens, eval_set.grader)
    greedy = {r["question_id"]: r["response"] for r in rows if r["greedy"]}
    return values, [greedy[q.id] for q in eval_set.questions]


TASK_YAML = """task: {name}
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
process_results: !function utils.process_results
generation_kwargs:
  until: []
  do_sample: false
  temperature: 0.0
  max_gen_toks: {max_new_tokens}
num_fewshot: 0
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""

UTILS_PY = '''"""Written by tempo-bench eval: lm-eval scores responses with tempo-bench's own grader."""
from tempo_bench.grading.pool import grader_by_name


def process_results(doc, results):
    return {"acc": float(grader_by_name(doc["grader"]).is_correct(results[0], doc["answer"]))}
'''


def write_lm_eval_task(eval_set: EvalSet, folder: Path, max_new_tokens: int) -> str:
    """A lm-eval task (YAML + utils.py + JSONL of our questions) in ``folder``; returns its name."""
    folder.mkdir(parents=True, exist_ok=True)
    name = f"tempo_bench_{eval_set.name.replace('-', '_')}"
    data = folder / "questions.jsonl"
    with data.open("w") as f:
        for q in eval_set.questions:
            f.write(json.dumps({"id": q.id, "prompt": q.prompt, "answer": eval_set.answer_key.answer(q.id),
                                "grader": eval_set.grader.name}) + "\n")
    (folder / f"{name}.yaml").write_text(TASK_YAML.format(name=name, data=data.resolve(), max_new_tokens=max_new_tokens))
    (folder / "utils.py").write_text(UTILS_PY)
    return name


def lm_eval_eval(adapter: Path, base: str, eval_set: EvalSet, folder: Path, max_new_tokens: int,
                 dtype: str, device: str, chat_template: bool, batch_size: int = 16):
    """lm-eval's accuracy and its greedy responses (question order) for the adapter."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:
        raise ImportError("--lm-eval needs lm-evaluation-harness: pip install 'tempo-bench[lmeval]'") from None
    import logging

    import datasets

    logging.getLogger("lm-eval").setLevel(logging.WARNING)  # its per-stage info lines
    datasets.disable_progress_bars()
    name = write_lm_eval_task(eval_set, folder, max_new_tokens)
    results = lm_eval.simple_evaluate(
        model="hf",
        # add_bos_token=False: the prompt as our backend feeds it (chat templates carry their own)
        model_args=f"pretrained={base},peft={adapter.resolve()},dtype={dtype},device={device},add_bos_token=False",
        tasks=[name], task_manager=TaskManager(include_path=str(folder)), batch_size=batch_size,
        log_samples=True, apply_chat_template=chat_template, random_seed=0, numpy_random_seed=0,
        torch_random_seed=0,
    )
    by_id = {s["doc"]["id"]: s["filtered_resps"][0] for s in results["samples"][name]}
    return results["results"][name]["acc,none"], [by_id[q.id] for q in eval_set.questions]
