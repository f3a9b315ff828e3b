"""What a run would load, from its config alone (`tempo-bench run --dry-run`)."""

from __future__ import annotations

import os
from pathlib import Path

import yaml

from tempo_bench.methods.catalog import method_class
from tempo_bench.run.memory_plan import PlanError, on_gpu, plan_memory
from tempo_bench.tasks.real import task_spec


def describe_run(config) -> str:
    """The resolved config and what a run of it would load, without loading anything (no model,
    data or network access: a local cache or file is looked up on disk only)."""
    cls = method_class(config.method)
    uri = config.log.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(config.out) / 'mlflow.db'}"
    model = _describe_model(config.model.path)
    rollout = config.rollout
    backend = rollout.backend
    if backend == "hf" and rollout.decode != "eager":
        backend += f" ({rollout.decode} decoding: a preallocated cache in batch-size buckets"
        backend += ", CUDA graphs captured per bucket)" if rollout.decode == "graphs" else ")"
    if backend == "vllm":
        v = rollout.vllm
        context = v.max_model_len or f"longest prompt + {rollout.max_new_tokens}"
        backend += (f" (weights synced as {v.sync}, tensor parallel {v.tensor_parallel_size}, "
                    f"{v.gpu_memory_utilization:.0%} of the planned card, context {context} tokens, "
                    f"sleep {'on' if v.sleep else 'off'})")
    lines = [
        "# resolved config", yaml.safe_dump(config.model_dump(), sort_keys=False).rstrip(), "",
        "# would load",
        f"policy:   {model}, {config.model.dtype} on {_describe_device(config.model.device)}, "
        + (f"LoRA r={config.lora.r}" if config.train.mode == "lora" else
           f"full fine-tuning ({'FSDP-sharded' if config.train.sharding == 'fsdp' else 'a replica per rank'})")
        + (", gradient checkpointing" if config.model.gradient_checkpointing else ""),
        f"critic:   {_describe_critic(config) if cls.uses_critic else 'none'}",
        f"task:     {_describe_task(config.task)}",
        f"rollouts: {backend}, {rollout.n} samples per question, up to {rollout.max_new_tokens} new tokens, "
        f"{config.train.prompts_per_step} questions per step, {config.train.steps} steps",
        f"method:   {config.method}{' (USES TEST LABELS)' if cls.uses_test_labels else ''} "
        f"{config.method_options().model_dump()}",
        f"grading:  {'in the training process' if not config.grading.workers else f'{config.grading.workers} worker processes'}",
        f"logging:  {uri}, experiment {config.log.experiment}",
    ]
    if on_gpu(config, described=True):
        try:
            lines += ["", *plan_memory(config).lines()]
        except PlanError as err:  # a model this machine has no config of: the run downloads it first
            lines += ["", f"memory plan: unavailable here ({err})"]
    return "\n".join(lines)


def _describe_model(path: str) -> str:
    if path in ("toy", "toy-rlvr", "toy-verifier"):
        return f"the shipped {path} checkpoint (tempo_bench/assets)"
    if Path(path).expanduser().is_dir():
        return f"{path} (local folder)"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(path, "config.json"), str)
    except Exception:  # not a valid repo id: the run will say so when it loads
        cached = False
    return f"{path} (hub id; {'in the local cache' if cached else 'not cached here: downloaded at start'})"


def _describe_device(device: str) -> str:
    import torch

    gpus = torch.cuda.device_count()
    if device == "cpu" or (device == "auto" and not gpus):
        return "cpu"
    here = f"{gpus} GPU(s) visible" if gpus else "no GPU visible here: the run needs one"
    return f"{device} ({here})"


def _describe_task(task) -> str:
    if task.name == "toy_addition":
        return f"toy_addition: {task.test_size} unlabeled test questions, {task.labeled_size} labeled"
    def source(name, path):
        spec = task_spec(name)
        path = path or spec.source  # a task file names its data
        if path:
            return f"{path} ({'found' if Path(path).is_file() else 'MISSING'})"
        return f"hub {spec.hub_id}{':' + spec.hub_config if spec.hub_config else ''} split {spec.split}"

    test = f"{task.name} ({task_spec(task.name).description}) from {source(task.name, task.source)}"
    if task.limit:
        test += f", first {task.limit}"
    labeled = (f"; labeled D_L: {task.labeled_size} questions drawn from {task.labeled} "
               f"({source(task.labeled, task.labeled_source)})") if task.labeled_size else "; no labeled pool"
    return test + labeled


def _describe_critic(config) -> str:
    if config.critic_shares_base():
        return "a LoRA adapter and value head on the policy's own base weights (critic.share_base)"
    backbone = _describe_model(config.critic.path) if config.critic.path else "a copy of the policy model"
    return f"a value head on {backbone}" + (" (LoRA)" if config.critic.lora else "")
