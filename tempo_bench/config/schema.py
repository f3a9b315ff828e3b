"""The run configuration's typed sections. Every section forbids unknown keys; a method's own
settings are validated against its ``Options`` model (``methods.<name>``)."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator, model_validator

from tempo_bench.core.effects import EXTENT, RECORDING, SPEED_ONLY, TIED
from tempo_bench.config.task_sections import (
    LABELED_POOLS,
    TASK_SECTIONS,
    TEST_TASKS,
    RealTaskConfig,
    TaskSection,
    ToyTaskConfig,
    Strict,
    known_task,
)
from tempo_bench.core.errors import ConfigError
from tempo_bench.tasks.real import is_task_file


DEFAULT_CARD_GB = 79.0  # an "80 GB" A100 / H100 as torch reports it, in GiB


class ModelConfig(Strict):
    path: str = Field("toy", description="'toy' (the shipped tiny model), a hub id or a local dir")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = Field("auto", description="'auto' (cuda when available, else cpu), 'cpu', 'cuda', 'cuda:1'")
    chat_template: bool = Field(True, description="wrap prompts in the tokenizer's chat template, if it has one")
    chat_template_kwargs: dict[str, Any] = Field(
        default_factory=dict, description="extra apply_chat_template arguments, e.g. enable_thinking"
    )
    gradient_checkpointing: bool = Field(False, json_schema_extra=SPEED_ONLY,
                                         description="trade compute for memory in training passes")
    attn_implementation: str | None = Field(None, json_schema_extra=SPEED_ONLY,
                                            description="e.g. sdpa, flash_attention_2 (None: default)")
    gpu_memory_gb: float | None = Field(
        None, gt=0, json_schema_extra=RECORDING, description="the GPU the config is sized for, GiB per GPU as torch reports it (None: 79, "
        "an '80 GB' card); the memory plan checks against it, or against the visible card where that is smaller")
    max_prompt_tokens: int = Field(1024, ge=1, json_schema_extra=RECORDING, description="the longest prompt the memory plan assumes, in tokens")

    def card_gb(self, visible_gb: float | None = None) -> float:
        """The card a run is checked against, GiB per GPU: gpu_memory_gb (the card the config is
        sized for, default 79), or the visible card where that is smaller. The memory plan checks
        every phase against it and vLLM takes its share of it, whatever the physical card."""
        sized_for = self.gpu_memory_gb or DEFAULT_CARD_GB
        return min(sized_for, visible_gb) if visible_gb else sized_for


class LoraConfig(Strict):
    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    fused: bool = Field(True, json_schema_extra=SPEED_ONLY, description="each LoRA linear layer's forward and backward as one autograd node "
                        "(tempo_bench/policy/lora_linear.py; equal to peft's within float rounding, 1.1-1.2x "
                        "faster toy training passes); false: peft's own forward, bit for bit as before 2026-12-03")


class VLLMConfig(Strict):
    """Settings of the vllm rollout backend (pip install 'tempo-bench[vllm]'): how the engine
    serves the policy, not what it samples (all ``speed``)."""

    model_config = {**Strict.model_config, "json_schema_extra": SPEED_ONLY}

    sync: Literal["lora", "merged"] = Field(
        "lora", description="serve the adapter through LoRARequest, or load merged weights into the engine")
    tensor_parallel_size: int = Field(1, ge=1)
    gpu_memory_utilization: float = Field(
        0.45, gt=0, le=1, description="share of the planned card vLLM takes (the card the memory plan checks "
        "against: model.gpu_memory_gb, or the visible card where smaller); ignored by vLLM's CPU build, which "
        "reserves one step's KV cache")
    sleep: bool = Field(True, description="free vLLM's GPU memory (sleep) while the trainer runs (a no-op on "
                        "vLLM's CPU build)")
    max_model_len: int | None = Field(
        None, ge=1, description="context vLLM reserves KV cache for (None: the run's longest prompt plus "
        "rollout.max_new_tokens; the memory plan assumes model.max_prompt_tokens plus rollout.max_new_tokens)")
    enforce_eager: bool = Field(False, description="no CUDA graphs (faster start, slower decode)")


class RolloutConfig(Strict):
    backend: str = Field("hf", description="rollout backend name (see tempo_bench.rollout)")
    vllm: VLLMConfig = VLLMConfig()
    n: int = Field(8, ge=1, description="samples per prompt trained on (n_train)")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=1)
    merge_lora: bool = Field(True, json_schema_extra=SPEED_ONLY, description="hf backend: sample from a merged copy of the weights "
                             "(faster; a second copy of the base model in memory)")
    fused_decode: bool = Field(True, json_schema_extra=SPEED_ONLY, description="hf backend: decode Llama models with the fused step "
                               "(rollout/llama_decode.py; the same tokens as transformers' own forward, tested); "
                               "false: transformers' forward for every token")
    decode: Literal["eager", "static", "graphs"] = Field(
        "eager", description="hf backend's decode loop: eager (a growing cache, finished rows dropped as they end), "
        "static (a preallocated cache in batch-size buckets, no host sync per token; the eager loop's tokens with "
        "rollout.seeding=question), or graphs (static, with CUDA graphs captured per bucket; GPU only, not yet "
        "measured on one)")
    seeding: Literal["step", "question"] = Field(
        "step", description="sampling noise: one stream per step (step), or one seed per question "
        "(question: a question's samples do not depend on the rest of the batch or on the number of ranks; "
        "needed by torchrun runs)")


class TrainConfig(Strict):
    mode: Literal["lora", "full"] = Field("lora", description="what the policy trains: a LoRA adapter (lora.*) or every "
                                          "parameter (full fine-tuning, the paper's setting)")
    sharding: Literal["replicate", "fsdp"] = Field(
        "replicate", json_schema_extra=SPEED_ONLY, description="under torchrun: a whole policy on every rank (replicate), "
        "or its parameters, gradients and optimiser state sharded over the ranks with FSDP2 (fsdp; train.mode=full)")
    offload: bool = Field(False, json_schema_extra=SPEED_ONLY, description="fsdp: keep the shards in host memory "
                          "between uses (slower; for models whose shards do not fit on the GPUs)")
    steps: int = Field(20, ge=1, json_schema_extra=EXTENT)
    prompts_per_step: int = Field(16, ge=1, description="unlabeled questions per step")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    loss: Literal["ppo", "gspo"] = "ppo"
    clip_low: float = Field(0.2, gt=0, lt=1)
    clip_high: float = Field(0.28, gt=0)
    ppo_epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    minibatches: int = Field(1, ge=1, description="optimiser steps per pass")
    micro_batch_rows: int | None = Field(
        None, ge=1, json_schema_extra=SPEED_ONLY, description="rows per forward/backward, gradients accumulated (None: a whole minibatch)")
    micro_batch_tokens: int | None = Field(
        None, ge=1, json_schema_extra=SPEED_ONLY, description="tokens per forward/backward of the policy update: rows "
        "sorted by length and packed while rows x longest length stays within it (verl's and TRL's knob; "
        "replaces micro_batch_rows and length_buckets there)")
    length_buckets: int = Field(
        4, ge=1, json_schema_extra=SPEED_ONLY, description="sort each minibatch by length into this many micro-batches (less padding; "
        "the gradient is the same)")
    checkpoint_every: int = Field(10, ge=0, json_schema_extra=RECORDING, description="checkpoint every this many steps and at the end (0: never); "
                                  "what `run --resume` and `compare --resume` continue from")
    budget_tokens: int | None = Field(
        None, ge=1, json_schema_extra=EXTENT, description="stop once rollout + policy + critic tokens reach this (equal compute)"
    )


class CriticConfig(Strict):
    """The value model of the critic methods and its schedule-independent settings."""

    path: str | None = Field(None, description="backbone checkpoint (None: model.path, a self-critic)")
    lora: bool = Field(False, description="train the backbone through a LoRA adapter (the `lora` section), "
                       "the value head in full: a large critic on one GPU")
    share_base: bool | None = Field(  # resumable: the checkpoint's critic layout is checked on its own
        None, json_schema_extra=SPEED_ONLY, description="a LoRA self-critic (critic.lora, critic.path unset or model.path) as a second adapter "
        "and a value head on the policy's own frozen base (peft multi-adapter) instead of a second copy of the "
        "base; None: wherever that applies, true: required (an error where it cannot), false: two copies")
    init: str | None = Field(None, description="a trained critic to start from ('toy-rlvr': the shipped RLVR "
                             "stage's critic, or a folder a critic was saved to); None: warm up a fresh value "
                             "head on labeled rollouts of the initial policy (the warmup_* settings)")
    head_init: Literal["random", "verdict"] = Field(
        "random", description="a fresh critic's value head: random, or 'verdict' on a verifier backbone "
        "(critic.path: toy-verifier): initialised from its verdict tokens' output embeddings, so the value "
        "of a complete response starts as head_scale * (logit(Y) - logit(N)), then warmed up like any head")
    head_scale: float = Field(0.25, gt=0, description="the verdict head's scale (head_init: verdict)")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    cliprange_value: float = Field(0.1, gt=0, description="value clip around the pre-update values")
    minibatch_rows: int = Field(256, ge=1, description="rows per optimiser step")
    micro_batch_rows: int | None = Field(None, ge=1, json_schema_extra=SPEED_ONLY,
                                         description="rows per forward pass (None: a whole minibatch)")
    length_buckets: int = Field(4, ge=1, json_schema_extra=SPEED_ONLY,
                                description="rows sorted by length into this many passes (less padding)")
    estep_questions: int = Field(16, ge=1, description="labeled questions rolled out per E-step")
    estep_samples: int = Field(8, ge=1)
    estep_epochs: int = Field(1, ge=1, description="passes over an E-step's rollouts")
    online_epochs: int = Field(1, ge=1, description="passes over the batch per online update")
    probe_questions: int = Field(8, ge=1, description="labeled questions held out as the probe")
    probe_samples: int = Field(8, ge=2)
    probe_every: int = Field(1, ge=1, description="critic diagnostics every this many steps")
    warmup_questions: int = Field(128, ge=1, description="starting critic: labeled questions")
    warmup_samples: int = Field(8, ge=1)
    warmup_epochs: int = Field(4, ge=0, description="passes over the warm-up rollouts (0: none, the head as initialised)")
    warmup_cliprange: float = Field(2.0, gt=0, description="value clip during warm-up (2: none)")
    seed: int = Field(0, ge=0, lt=2**63, description="starting-critic seed: the same critic for every method and run")


class EvalTaskConfig(Strict):
    """A benchmark evaluated beside the test set at every evaluation (metrics only: no method
    sees it), logged as eval_<name>/... (a task file's name: its file name without .yaml)."""

    name: str = Field(description=f"{', '.join(TEST_TASKS)}, or a task file (.yaml)")
    source: str | None = Field(None, description="local JSON list / JSONL / parquet (None: the hub)")
    limit: int | None = Field(None, ge=1, description="first N questions only")

    @field_validator("name")
    @classmethod
    def _known(cls, name: str) -> str:
        return known_task(name, TEST_TASKS)

    def key(self) -> str:
        """The metric prefix's name: the task name, or the task file's stem (MLflow-safe)."""
        stem = Path(self.name).stem if is_task_file(self.name) else self.name
        return re.sub(r"[^\w.-]", "_", stem)


class EvalConfig(Strict):
    every: int = Field(5, ge=1, json_schema_extra=EXTENT, description="evaluate every this many steps (and at 0 and the end)")
    k: int = Field(8, ge=1, description="samples per test question at temperature 1.0")
    size: int | None = Field(None, ge=1, description="test questions evaluated (None: all)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the k samples")
    top_p: float = Field(1.0, gt=0, le=1, description="nucleus sampling of the k samples (TTRL evaluates at 0.95)")
    max_new_tokens: int | None = Field(None, ge=1, description="response length of evaluation samples (None: "
                                       "rollout.max_new_tokens)")
    greedy: bool = True
    tasks: list[EvalTaskConfig] = Field(
        default_factory=list, description="benchmarks evaluated beside the test set at every evaluation, e.g. "
        "[{name: aime25}] beside AIME 2024 as TEMPO's scripts do; logged as eval_<name>/...")
    collapse_tolerance: float = Field(
        0.05, ge=0, le=1, json_schema_extra=RECORDING, description="a run has collapsed once mean@k stays below its step-0 value minus this "
        "for the rest of the run (results tables and figures; not part of the run's identity)")


class GradingConfig(Strict):
    workers: int = Field(0, ge=0, json_schema_extra=SPEED_ONLY, description="grading processes (0: in the training process)")
    timeout_s: float = Field(60.0, gt=0, description="per question group, on top of the 5 s per verdict")


class LogConfig(Strict):
    tracking_uri: str | None = Field(  # the resumed run lives in this store
        None, json_schema_extra=TIED, description="MLflow URI; None: $MLFLOW_TRACKING_URI, else sqlite under out"
    )
    experiment: str = Field("tempo-bench", json_schema_extra=TIED)
    rollouts_jsonl: bool = Field(True, json_schema_extra=RECORDING, description="per-sample rollouts as JSONL at each eval")


class RunConfig(Strict):
    preset: str = Field("", json_schema_extra=RECORDING, description="the preset's name (a label: its settings "
                        "are the other fields)")
    seed: int = Field(0, ge=0, lt=2**63, description="the run's seed: every seeded draw comes from (seed, stream, step)")
    method: str = "standard_ttt"
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-method options, validated by each method"
    )
    task: TaskSection = ToyTaskConfig()
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    rollout: RolloutConfig = RolloutConfig()
    critic: CriticConfig = CriticConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    grading: GradingConfig = GradingConfig()
    log: LogConfig = LogConfig()
    threads: int = Field(2, ge=1, json_schema_extra=SPEED_ONLY, description="torch CPU threads")
    out: str = Field("runs", json_schema_extra=RECORDING, description="output folder (checkpoints, local MLflow store)")

    @model_validator(mode="before")
    @classmethod
    def _toy_task_by_default(cls, data):
        task = data.get("task") if isinstance(data, dict) else None
        if isinstance(task, dict) and "name" not in task:
            data["task"] = {"name": "toy_addition", **task}
        return data

    @model_validator(mode="after")
    def _shared_base_possible(self):
        if self.critic.share_base and not self._critic_can_share_base():
            raise ValueError("critic.share_base: true needs a LoRA policy (train.mode: lora) and a LoRA self-critic that "
                             "starts fresh (critic.lora: true, "
                             f"critic.path unset or {self.model.path!r}, critic.init unset); got train.mode={self.train.mode}, critic.lora="
                             f"{self.critic.lora}, critic.path={self.critic.path!r}, critic.init={self.critic.init!r}")
        return self

    @model_validator(mode="after")
    def _layout_possible(self):
        if self.train.sharding == "fsdp" and self.train.mode != "full":
            raise ValueError("train.sharding=fsdp shards a fully fine-tuned policy: set train.mode=full (a LoRA run "
                             "replicates the base model and sums the adapter's gradients: train.sharding=replicate)")
        if self.train.mode == "full" and self.rollout.backend == "vllm" and self.rollout.vllm.sync == "lora":
            raise ValueError("rollout.vllm.sync=lora serves a LoRA adapter, and train.mode=full trains every weight: "
                             "set rollout.vllm.sync=merged (the whole weights streamed into the engine)")
        if self.train.offload and self.train.sharding != "fsdp":
            raise ValueError("train.offload moves FSDP shards to host memory: it needs train.sharding=fsdp")
        return self

    def _critic_can_share_base(self) -> bool:
        critic = self.critic
        return (self.train.mode == "lora" and critic.lora and critic.path in (None, self.model.path)
                and critic.init is None)

    def policy_model(self, host: bool = False):
        """The ModelConfig the policy is loaded with: full fine-tuning keeps float32 master weights
        (AdamW's updates at lr ~1e-6 are below bfloat16's resolution); model.dtype is then the dtype
        FSDP computes in and the sampling copy holds. ``host``: loaded in host memory (a sharded
        run: rank 0 reads the weights there, and they are broadcast into every rank's shards)."""
        update = ({} if self.train.mode == "lora" else {"dtype": "float32"}) | ({"device": "cpu"} if host else {})
        return self.model.model_copy(update=update) if update else self.model

    def policy_lora(self):
        """The policy's LoRA settings, or None when it trains every parameter (train.mode=full)."""
        return self.lora if self.train.mode == "lora" else None

    def critic_shares_base(self) -> bool:
        """Whether the critic is a second adapter on the policy's base (critic.share_base)."""
        return self._critic_can_share_base() if self.critic.share_base is None else self.critic.share_base

    def critic_layout(self) -> str:
        """Where the critic's backbone lives, as a checkpoint records it."""
        return "shared base" if self.critic_shares_base() else "own base"

    def eval_max_new_tokens(self) -> int:
        """The response length of evaluation samples: eval.max_new_tokens, else the training one."""
        return self.eval.max_new_tokens or self.rollout.max_new_tokens

    def longest_response(self) -> int:
        """The longest response the run samples, in training or in evaluation."""
        return max(self.rollout.max_new_tokens, self.eval_max_new_tokens())

    def vllm_context_len(self, longest_prompt: int | None = None) -> int:
        """The context vLLM reserves KV cache for (its ``max_model_len``): rollout.vllm.max_model_len
        where set, else the longest prompt plus the longest response (training or evaluation).
        ``longest_prompt``: the run's, in tokens, once its prompts are known; the memory plan, made
        before, assumes model.max_prompt_tokens."""
        if self.rollout.vllm.max_model_len is not None:
            return self.rollout.vllm.max_model_len
        return (longest_prompt or self.model.max_prompt_tokens) + self.longest_response()

    def step_shape(self):
        """The selected method's step batch (tempo_bench.methods.base.StepShape)."""
        from tempo_bench.methods.catalog import method_class

        method = method_class(self.method)(self.method_options(), n_train=self.rollout.n, seed=self.seed)
        return method.step_shape(self.train.prompts_per_step)

    def method_options(self, name: str | None = None):
        """The validated options object of ``name`` (default: the selected method)."""
        from tempo_bench.methods.catalog import method_class  # (the catalog loads torch: only when asked)

        name = name or self.method
        return _validate_options(name, method_class(name), self.methods.get(name, {}))


def _validate_options(name: str, cls, raw: dict):
    try:
        return cls.Options(**raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, prefix=f"methods.{name}", model=cls.Options)) from None


def _resolve_loc(model: type[BaseModel], loc: tuple) -> tuple[tuple, list[str]]:
    """(loc without discriminator tags, the fields allowed where loc ends). A discriminated
    union (``task``) puts the tag in the error location: task.aime24.x is shown as task.x."""
    shown, allowed = [], list(model.model_fields)
    parts = list(loc)
    while parts:
        part = parts.pop(0)
        shown.append(part)
        field = model.model_fields.get(str(part)) if model is not None else None
        ann = getattr(field, "annotation", None)
        if model is RunConfig and part == "task" and parts:
            # the task union: the next part is its tag (toy_addition or real), not a field
            model = TASK_SECTIONS.get(str(parts.pop(0)))
        elif isinstance(ann, type) and issubclass(ann, BaseModel):
            model = ann
        else:
            model = None
        if parts:
            allowed = list(model.model_fields) if model is not None else []
    return tuple(shown), allowed


def format_errors(err: ValidationError, prefix: str = "", model: type[BaseModel] = RunConfig) -> str:
    lines = []
    for e in err.errors():
        loc, allowed = _resolve_loc(model, tuple(e["loc"]))
        name = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc)
        if e["type"] == "extra_forbidden":
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            lines.append(
                f"unknown key {name!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
            )
        else:
            lines.append(f"{name}: {e['msg']} (got {e.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)
