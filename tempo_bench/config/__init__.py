"""Typed run configuration: YAML presets plus dotted command-line overrides.

``load_config("toy-smoke", ["train.lr=3e-4", "method=standard_ttt"])`` returns a validated
:class:`RunConfig`. Every model forbids unknown keys; a bad key or value raises
:class:`~tempo_bench.core.errors.ConfigError` naming the field, the value and what is allowed.
The sections live in :mod:`tempo_bench.config.schema` (the task's in ``task_sections``), loading in
:mod:`tempo_bench.config.loading`, and what each setting changes (numbers, speed or nothing; whether a
resume may change it) on the field itself, read by :mod:`tempo_bench.core.effects`.
"""

from tempo_bench.core.effects import config_identity
from tempo_bench.config.loading import (
    apply_override,
    deep_merge,
    flatten,
    load_config,
    parse_yaml,
    preset_names,
)
from tempo_bench.config.schema import (
    LABELED_POOLS,
    TEST_TASKS,
    CriticConfig,
    EvalConfig,
    GradingConfig,
    LogConfig,
    LoraConfig,
    ModelConfig,
    RealTaskConfig,
    RolloutConfig,
    RunConfig,
    ToyTaskConfig,
    TrainConfig,
    VLLMConfig,
    format_errors,
)

__all__ = [
    "LABELED_POOLS", "TEST_TASKS", "CriticConfig", "EvalConfig", "GradingConfig", "LogConfig", "LoraConfig",
    "ModelConfig", "RealTaskConfig", "RolloutConfig", "RunConfig", "ToyTaskConfig", "TrainConfig", "VLLMConfig",
    "apply_override", "config_identity", "deep_merge", "flatten", "format_errors", "load_config", "parse_yaml", "preset_names",
]
