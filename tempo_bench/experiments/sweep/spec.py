"""Sweep specs: a base preset, fixed overrides, the search space, the objective and its direction,
the trial budget, the sampler, the pruner and the seeds per trial (sweeps/*.yaml)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from tempo_bench.config import format_errors, load_config, parse_yaml
from tempo_bench.core.errors import ConfigError
from tempo_bench.run.evaluation import eval_metric_names


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ParamSpec(_Strict):
    type: Literal["categorical", "int", "float"]
    choices: list[Any] | None = None
    low: float | None = None
    high: float | None = None
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _complete(self):
        if self.type == "categorical" and not self.choices:
            raise ValueError("a categorical parameter needs a non-empty 'choices' list")
        if self.type != "categorical" and (self.low is None or self.high is None or self.low > self.high):
            raise ValueError(f"a {self.type} parameter needs low <= high")
        if self.log and self.type != "categorical" and self.low <= 0:
            raise ValueError("a log-scale parameter needs low > 0")
        return self


class ObjectiveSpec(_Strict):
    metric: str = "eval/mean_at_k"
    mode: Literal["final", "auc"] = Field("final", description="last eval value, or mean area under the eval curve")
    direction: Literal["maximize", "minimize"] = "maximize"


class SamplerSpec(_Strict):
    name: Literal["tpe", "random", "grid"] = Field(
        "tpe", description="grid: every point of the categorical space exactly once, in the order listed")
    seed: int = Field(0, description="seed of the tpe and random samplers")


class PrunerSpec(_Strict):
    name: Literal["none", "median"] = "median"
    n_startup_trials: int = Field(2, ge=0)
    n_warmup_steps: int = Field(0, ge=0)


class SweepSpec(_Strict):
    preset: str
    study: str = Field(..., description="default study name (--study overrides)")
    overrides: list[str] = Field(default_factory=list, description="fixed KEY=VALUE overrides")
    space: dict[str, ParamSpec] = Field(..., min_length=1, description="the settings a trial draws (at least one)")
    objective: ObjectiveSpec = ObjectiveSpec()
    n_trials: int = Field(10, ge=1)
    sampler: SamplerSpec = SamplerSpec()
    pruner: PrunerSpec = PrunerSpec()
    seeds: list[int] = Field([0], min_length=1)
    stale_after_s: float = Field(300.0, gt=0, description="a RUNNING trial silent this long (or whose worker "
                                 "process on this machine is gone) is marked interrupted and run again")
    max_failed_trials: int = Field(3, ge=1, description="a worker stops after this many trials that raised an "
                                   "error (not interruptions) in one invocation")


def load_spec(path: str | Path) -> SweepSpec:
    """A validated sweep spec. Every corner of the space must make a valid run config, a grid
    must hold ``n_trials`` points, and the objective must be a metric a run of the spec logs."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"sweep spec {path} does not exist")
    data = parse_yaml(path.read_text(), str(path))
    if not isinstance(data, dict):
        raise ConfigError(f"sweep spec {path} must be a YAML mapping")
    try:
        spec = SweepSpec(**data)
    except ValidationError as err:
        raise ConfigError(format_errors(err, model=SweepSpec).replace("invalid config", f"invalid sweep spec {path}")) from None
    for name, param in spec.space.items():
        values = param.choices if param.type == "categorical" else [param.low, param.high]
        for value in values:
            value = int(value) if param.type == "int" else value
            trial_config(spec, {name: value})
    if spec.sampler.name == "grid":
        if any(p.type != "categorical" for p in spec.space.values()):
            raise ConfigError(f"sweep spec {path}: the grid sampler needs every parameter to be categorical")
    check_trial_count(spec, spec.n_trials, f"sweep spec {path}")
    check_objective(spec, path)
    return spec


def check_objective(spec: SweepSpec, where: str | Path) -> None:
    """The objective must be an evaluation metric a run of this spec logs (the objective reads
    the run's evaluations), or every trial would run to its end and then fail."""
    logged = eval_metric_names(trial_config(spec, {}).eval)
    if spec.objective.metric not in logged:
        raise ConfigError(f"sweep spec {where}: objective.metric {spec.objective.metric!r} is not an evaluation "
                          f"metric a run of this spec logs; choose one of: {', '.join(sorted(logged))}")


def space_size(spec: SweepSpec) -> int | None:
    """How many distinct points the search space holds (each is trained once), None if unbounded
    (a float range without a step)."""
    size = 1
    for p in spec.space.values():
        if p.type == "categorical":
            size *= len(p.choices)
        elif p.type == "int" or p.step:
            size *= int((p.high - p.low) // (p.step or 1)) + 1
        else:
            return None
    return size


def check_trial_count(spec: SweepSpec, n_trials: int, where: str) -> None:
    """A sweep cannot finish more trials than its space has distinct points."""
    size = space_size(spec)
    if size is not None and n_trials > size:
        kind = "grid" if spec.sampler.name == "grid" else "search space"
        raise ConfigError(f"{where}: n_trials={n_trials} but the {kind} holds {size} distinct points (each is "
                          "trained once); lower n_trials or widen the space")


def grid_points(spec: SweepSpec) -> list[dict[str, Any]]:
    """Every point of a categorical grid, in the order the spec lists the choices."""
    import itertools

    names = list(spec.space)
    return [dict(zip(names, values)) for values in itertools.product(*(spec.space[n].choices for n in names))]


def trial_config(spec: SweepSpec, params: dict[str, Any], seed: int | None = None):
    overrides = list(spec.overrides) + [f"{k}={yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}"
                                        for k, v in params.items()]
    if seed is not None:
        overrides.append(f"seed={seed}")
    return load_config(spec.preset, overrides)


def suggest(trial, spec: SweepSpec) -> dict[str, Any]:
    out = {}
    for name, p in spec.space.items():
        if p.type == "categorical":
            out[name] = trial.suggest_categorical(name, p.choices)
        elif p.type == "int":
            out[name] = trial.suggest_int(name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
        else:
            out[name] = trial.suggest_float(name, p.low, p.high, step=p.step, log=p.log)
    return out


def objective_value(evals: dict[int, dict[str, float]], spec: ObjectiveSpec) -> float:
    """The final value of the metric, or its area under the curve over steps divided by the step
    range (a mean level that rewards getting there early)."""
    steps = sorted(s for s in evals if spec.metric in evals[s])
    if not steps:
        raise ValueError(f"objective metric {spec.metric!r} was never logged")
    values = [evals[s][spec.metric] for s in steps]
    if spec.mode == "final" or len(steps) == 1:
        return float(values[-1])
    return float(np.trapezoid(values, steps) / (steps[-1] - steps[0]))


# -- storage and study ------------------------------------------------------------------------
