"""What a run reads, checked before any MLflow run is created: a bad path or a malformed file is
one named error, not a failed run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from tempo_bench.core.errors import DataError
from tempo_bench.policy.model import ModelLoadError, check_model, load_tokenizer, prompt_renderer, resolve_model_path
from tempo_bench.rollout import get_backend
from tempo_bench.tasks import LabeledQuestion, TaskData, load_eval_task, load_task_data

if TYPE_CHECKING:
    from tempo_bench.config import RunConfig
    from tempo_bench.methods.base import Method


def check_inputs(config) -> None:
    """Every checkpoint and file a run config names can be read: the policy's model, a critic to
    start from (``critic.init``) and the task's questions (a malformed file is a DataError naming
    file and line). Called before any run is created."""
    task = load_task_data(config.task)
    if config.eval.size and config.eval.size > len(task.test):  # was logged as asked, evaluated on fewer
        raise DataError(f"eval.size={config.eval.size} but the task has {len(task.test)} test questions: lower "
                        "eval.size or unset it (all of them)")
    for extra in config.eval.tasks:
        load_eval_task(extra)
    check_model(config.model.path)
    if config.critic.path is not None:
        check_model(config.critic.path)
    if config.critic.init is not None:
        try:
            folder = Path(resolve_model_path(config.critic.init, part="critic"))
        except FileNotFoundError as err:
            raise ModelLoadError(str(err)) from None
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"critic.init={config.critic.init!r}: no saved critic in {folder} "
                                 "(config.json missing); use 'toy-rlvr', a folder a critic was saved to, or null")


def split_labeled(task: TaskData, config: RunConfig, method: Method) -> tuple[list[LabeledQuestion], list[LabeledQuestion]]:
    """(pool, probe): the probe's labeled questions are held out of the pool that E-steps and
    labeled M-step rows draw from."""
    needs_labels = method.needs_labeled_pool(config.train.prompts_per_step)
    probe_size = config.critic.probe_questions if method.uses_critic else 0
    pool, probe = task.labeled[probe_size:], task.labeled[:probe_size]
    if needs_labels and not pool:
        raise ValueError(
            f"method {config.method!r} needs labeled questions, but the labeled pool has "
            f"{len(task.labeled)} (probe: {probe_size}); raise task.labeled_size"
        )
    return pool, probe


def prompted_task(task: TaskData, tokenizer, model_cfg) -> TaskData:
    """The task with its prompts as the model saw prompts in instruction tuning (its chat
    template, where it has one and model.chat_template is on)."""
    render = prompt_renderer(tokenizer, model_cfg)
    return task if render is None else task.with_prompts(render)


def longest_prompt(tokenizer, *tasks: TaskData) -> int:
    """The longest prompt a run of ``tasks`` samples from (test and labeled questions), in tokens."""
    prompts = [q.prompt for task in tasks for q in (*task.test, *task.labeled)]
    return max(len(ids) for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"])


def check_rollout(config) -> None:
    """The rollout backend can serve the model and the run's prompts (vLLM: its build, the
    model's architecture and head size, the LoRA rank, the context): a ConfigError naming the
    setting, before any run is created. After check_inputs (which reads what this needs) and the
    memory plan (a config that cannot fit fails first, whatever is installed)."""
    tokenizer = load_tokenizer(config.model.path)
    tasks = [load_task_data(config.task), *(load_eval_task(extra) for extra in config.eval.tasks)]
    prompted = [prompted_task(task, tokenizer, config.model) for task in tasks]
    check_context(config, tokenizer, prompted)
    get_backend(config.rollout.backend).check(config, longest_prompt(tokenizer, *prompted))


def check_context(config, tokenizer, tasks: list[TaskData]) -> None:
    """Every prompt plus the longest response fits the model's context (a 10 MB question was
    accepted and grew memory past 6 GB): a DataError naming the question, before any run."""
    from transformers import AutoConfig

    model_config = AutoConfig.from_pretrained(resolve_model_path(config.model.path)).get_text_config()
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is None:
        return
    room = limit - config.longest_response()
    for task in tasks:
        for question in (*task.test, *task.labeled):
            if len(question.prompt) <= room:  # a token is at least one character: no need to tokenize
                continue
            tokens = len(tokenizer(question.prompt, add_special_tokens=False)["input_ids"])
            if tokens > room:
                raise DataError(f"question {question.id!r} of task {task.name!r} is {tokens} tokens long: with "
                                f"responses of up to {config.longest_response()} tokens it exceeds the model's "
                                f"context of {limit} tokens (max_position_embeddings): use a model with a longer "
                                "context (model.path) or shorter questions")
