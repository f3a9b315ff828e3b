"""Typed run configuration: YAML presets plus dotted command-line overrides.

``load_config("toy-smoke", ["train.lr=3e-4", "method=standard_ttt"])`` returns a validated
:class:`RunConfig`. Every model forbids unknown keys; a bad key or value raises
:class:`ConfigError` naming the field, the value and what is allowed.
"""

from __future__ import annotations

import difflib
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tempo_bench.registry import unknown_name


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the config."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ToyTaskConfig(_Strict):
    """The embedded column-addition task (tempo_bench/toy/task.py)."""

    name: Literal["toy_addition"] = "toy_addition"
    test_size: int = Field(64, ge=1, description="unlabeled test questions (D_U)")
    test_digits: list[int] = Field([3], description="operand digit counts of test questions")
    test_chain_fraction: float | None = Field(
        0.5, ge=0, le=1, description="share of test questions with a chain carry (None: natural)"
    )
    labeled_size: int = Field(256, ge=0, description="labeled pool size (D_L)")
    labeled_digits: list[int] = Field([1, 2, 3], description="digit counts of labeled questions")
    labeled_chain_fraction: float | None = Field(None, ge=0, le=1)
    seed: int = Field(1234, description="data seed: the same questions for every method and run")

    @model_validator(mode="after")
    def _digits_in_range(self):
        for field in ("test_digits", "labeled_digits"):
            bad = [d for d in getattr(self, field) if not 1 <= d <= 6]
            if bad or not getattr(self, field):
                raise ValueError(f"{field} must list digit counts between 1 and 6, got {bad or '[]'}")
        return self


class ModelConfig(_Strict):
    path: str = Field("toy", description="'toy' (the shipped tiny model), a hub id or a local dir")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"


class LoraConfig(_Strict):
    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


class RolloutConfig(_Strict):
    backend: str = Field("hf", description="rollout backend name (see tempo_bench.rollout)")
    n: int = Field(8, ge=1, description="samples per prompt trained on (n_train)")
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(96, ge=1)


class TrainConfig(_Strict):
    steps: int = Field(20, ge=1)
    prompts_per_step: int = Field(16, ge=1, description="unlabeled questions per step")
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    loss: Literal["ppo", "gspo"] = "ppo"
    clip_low: float = Field(0.2, gt=0, lt=1)
    clip_high: float = Field(0.28, gt=0)
    ppo_epochs: int = Field(1, ge=1, description="passes over each rollout batch")
    minibatches: int = Field(1, ge=1, description="optimiser steps per pass")
    checkpoint_every: int = Field(0, ge=0, description="checkpoint every this many steps (0: never)")
    budget_tokens: int | None = Field(
        None, ge=1, description="stop once rollout + policy + critic tokens reach this (equal compute)"
    )


class CriticConfig(_Strict):
    """The value model of the critic methods and its schedule-independent settings."""

    path: str | None = Field(None, description="backbone checkpoint (None: model.path, a self-critic)")
    lr: float = Field(1e-4, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    grad_clip: float = Field(1.0, gt=0)
    cliprange_value: float = Field(0.1, gt=0, description="value clip around the pre-update values")
    minibatch_rows: int = Field(256, ge=1)
    estep_questions: int = Field(16, ge=1, description="labeled questions rolled out per E-step")
    estep_samples: int = Field(8, ge=1)
    estep_epochs: int = Field(1, ge=1, description="passes over an E-step's rollouts")
    online_epochs: int = Field(1, ge=1, description="passes over the batch per online update")
    probe_questions: int = Field(8, ge=1, description="labeled questions held out as the probe")
    probe_samples: int = Field(8, ge=2)
    probe_every: int = Field(1, ge=1, description="critic diagnostics every this many steps")
    warmup_questions: int = Field(128, ge=1, description="starting critic: labeled questions")
    warmup_samples: int = Field(8, ge=1)
    warmup_epochs: int = Field(4, ge=1)
    warmup_cliprange: float = Field(2.0, gt=0, description="value clip during warm-up (2: none)")
    seed: int = Field(0, description="starting-critic seed: the same critic for every method and run")


class EvalConfig(_Strict):
    every: int = Field(5, ge=1, description="evaluate every this many steps (and at 0 and the end)")
    k: int = Field(8, ge=1, description="samples per test question at temperature 1.0")
    size: int | None = Field(None, ge=1, description="test questions evaluated (None: all)")
    temperature: float = Field(1.0, gt=0, description="sampling temperature of the k samples")
    greedy: bool = True


class LogConfig(_Strict):
    tracking_uri: str | None = Field(
        None, description="MLflow URI; None: $MLFLOW_TRACKING_URI, else sqlite under out"
    )
    experiment: str = "tempo-bench"
    rollouts_jsonl: bool = Field(True, description="per-sample rollouts as JSONL at each eval")


class RunConfig(_Strict):
    preset: str = ""
    seed: int = 0
    method: str = "standard_ttt"
    methods: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="per-method options, validated by each method"
    )
    task: ToyTaskConfig = ToyTaskConfig()
    model: ModelConfig = ModelConfig()
    lora: LoraConfig = LoraConfig()
    rollout: RolloutConfig = RolloutConfig()
    critic: CriticConfig = CriticConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    log: LogConfig = LogConfig()
    threads: int = Field(2, ge=1, description="torch CPU threads")
    out: str = Field("runs", description="output folder (checkpoints, local MLflow store)")

    def method_options(self, name: str | None = None):
        """The validated options object of ``name`` (default: the selected method)."""
        from tempo_bench.methods import method_class

        name = name or self.method
        return _validate_options(name, method_class(name), self.methods.get(name, {}))


def _validate_options(name: str, cls, raw: dict):
    try:
        return cls.Options(**raw)
    except ValidationError as err:
        raise ConfigError(format_errors(err, prefix=f"methods.{name}", model=cls.Options)) from None


def preset_names() -> list[str]:
    folder = resources.files("tempo_bench") / "presets"
    return sorted(p.name[: -len(".yaml")] for p in folder.iterdir() if p.name.endswith(".yaml"))


def _read_preset(name: str) -> dict:
    path = Path(name)
    if path.suffix in {".yaml", ".yml"}:
        if not path.is_file():
            raise ConfigError(f"preset file {name} does not exist")
        return yaml.safe_load(path.read_text()) or {}
    if name not in preset_names():
        raise ConfigError(unknown_name("preset", name, preset_names(), ", or a path to a .yaml file"))
    text = (resources.files("tempo_bench") / "presets" / f"{name}.yaml").read_text()
    return yaml.safe_load(text) or {}


def apply_override(data: dict, assignment: str) -> None:
    """Apply ``a.b.c=value`` to nested ``data`` in place; the value is parsed as YAML."""
    if "=" not in assignment:
        raise ConfigError(f"override {assignment!r} must look like key.path=value")
    key, raw = assignment.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {assignment!r} has an empty key")
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {assignment!r}: {part!r} is a value, not a section")
        node = child
    try:
        node[parts[-1]] = yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {assignment!r}: value is not valid YAML ({err})") from None


def _allowed_fields(model: type[BaseModel], loc: tuple) -> list[str]:
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        model = ann
    return list(model.model_fields)


def format_errors(err: ValidationError, prefix: str = "", model: type[BaseModel] = RunConfig) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        name = ".".join(str(p) for p in ((prefix,) if prefix else ()) + loc)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_fields(model, loc)
            hint = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            lines.append(
                f"unknown key {name!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + (f"; allowed here: {', '.join(allowed)}" if allowed else "")
            )
        else:
            lines.append(f"{name}: {e['msg']} (got {e.get('input')!r})")
    return "invalid config:\n  " + "\n  ".join(lines)


def load_config(preset: str, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Load a preset by name (or a .yaml path), apply overrides, validate everything, including
    the options of every method the config mentions."""
    data = _read_preset(preset)
    if not isinstance(data, dict):
        raise ConfigError(f"preset {preset!r} must be a YAML mapping")
    data.setdefault("preset", Path(preset).stem if preset.endswith((".yaml", ".yml")) else preset)
    for assignment in overrides:
        apply_override(data, assignment)
    try:
        config = RunConfig(**data)
    except ValidationError as err:
        raise ConfigError(format_errors(err)) from None
    from tempo_bench.methods import method_names

    for name in {config.method, *config.methods}:
        if name not in method_names():
            raise ConfigError(unknown_name("method", name, method_names()))
        config.method_options(name)
    _check_labeled_pool(config)
    return config


def _check_labeled_pool(config: RunConfig) -> None:
    """A method that needs labeled questions must have some left after the critic's probe."""
    from tempo_bench.methods import method_class

    cls = method_class(config.method)
    try:
        method = cls(config.method_options(), n_train=config.rollout.n)
    except ValueError as err:  # settings that are valid alone but not together
        raise ConfigError(str(err)) from None
    probe = config.critic.probe_questions if cls.uses_critic else 0
    if (cls.uses_critic or method.labeled_per_step() > 0) and config.task.labeled_size <= probe:
        raise ConfigError(
            f"method {config.method!r} needs labeled questions, but task.labeled_size="
            f"{config.task.labeled_size} leaves none after the critic's probe ({probe}); "
            f"raise task.labeled_size"
        )


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """{"a": {"b": 1}} -> {"a.b": 1}; lists stay values (MLflow params are flat strings)."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out
