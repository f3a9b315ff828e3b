"""`tempo-bench compare`: several methods x seeds on one preset, into one MLflow experiment, and a
results table with 95% bootstrap confidence intervals over seeds.

Every run shares the task data, the starting actor and (for critic methods) the starting critic;
seeds change only the sampling and update randomness.
"""

from __future__ import annotations

import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from tempo_bench.stats import mean_ci

ALL_METHODS = ["standard_ttt", "fixed_critic", "online_critic", "tempo", "labeled_rlvr", "empo", "oracle"]
CORE_METHODS = ALL_METHODS[:4]

# (column, metric key, where): "initial" / "final" = first / last eval, "start" / "end" = first /
# last training steps
TABLE = [
    ("mean@k", "eval/mean_at_k", "final"),
    ("maj@k", "eval/maj_at_k", "final"),
    ("pass@k", "eval/pass_at_k", "final"),
    ("greedy", "eval/greedy_acc", "final"),
    ("distinct start", "eval/distinct_answers", "initial"),
    ("distinct end", "eval/distinct_answers", "final"),
    ("pb start", "reward/pointbiserial", "start"),
    ("pb end", "reward/pointbiserial", "end"),
    ("auroc_w start", "reward/auroc_within", "start"),
    ("auroc_w end", "reward/auroc_within", "end"),
    ("critic gap ece", "critic/gap/ece", "end"),
    ("critic gap auroc_w", "critic/gap/auroc_within", "end"),
]


def parse_methods(text: str) -> list[str]:
    from tempo_bench.methods import method_names

    if text == "all":
        return list(ALL_METHODS)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in method_names()]
    if unknown or not methods:
        raise ValueError(f"unknown methods {unknown}; available: {', '.join(method_names())}, or 'all'")
    return methods


def parse_seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if not seeds:
        raise ValueError("--seeds is empty")
    return seeds


@dataclass
class Outcome:
    method: str
    seed: int
    run_id: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def summarise(result, window: int = 5) -> dict[str, float]:
    """The table's numbers from one run: the last evaluation, and reward quality averaged over the
    first and the last ``window`` training steps (one step's figure is noisy)."""
    out: dict[str, float] = {}
    evals = {"initial": result.evals[min(result.evals)], "final": result.evals[max(result.evals)]}
    steps = sorted(result.steps)
    for _, key, where in TABLE:
        if where in evals:
            out[f"{key}@{where}"] = evals[where].get(key, math.nan)
        else:
            chosen = steps[:window] if where == "start" else steps[-window:]
            vals = [result.steps[s].get(key, math.nan) for s in chosen]
            vals = [v for v in vals if np.isfinite(v)]
            out[f"{key}@{where}"] = float(np.mean(vals)) if vals else math.nan
    return out


def results_cells(outcomes: list[Outcome]) -> list[dict]:
    """One row per method: the method label, its seed count, and per TABLE column the mean over
    seeds with its 95% stratified-bootstrap interval, as (mean, low, high)."""
    rows = []
    for method in dict.fromkeys(o.method for o in outcomes):
        done = [o for o in outcomes if o.method == method and o.error is None]
        row = {"method": method + (" (test labels)" if method == "oracle" else ""), "seeds": len(done)}
        for column, key, where in TABLE:
            row[column] = mean_ci([o.values.get(f"{key}@{where}", math.nan) for o in done])
        rows.append(row)
    return rows


def _cell(value: tuple[float, float, float], latex: bool) -> str:
    mean, lo, hi = value
    if math.isnan(mean):
        return "--" if latex else "-"
    if math.isnan(lo):
        return f"{mean:.3f}"
    return f"{mean:.3f} {{\\scriptsize [{lo:.3f}, {hi:.3f}]}}" if latex else f"{mean:.3f} [{lo:.3f}, {hi:.3f}]"


def results_table(outcomes: list[Outcome], fmt: str = "markdown") -> str:
    """The results table, one row per method, each cell mean [95% CI] over seeds, as markdown
    or as a LaTeX tabular (booktabs)."""
    rows = results_cells(outcomes)
    columns = [c for c, _, _ in TABLE]
    if fmt == "markdown":
        lines = ["| method | seeds | " + " | ".join(columns) + " |", "|" + "---|" * (len(columns) + 2)]
        lines += [f"| {r['method']} | {r['seeds']} | " + " | ".join(_cell(r[c], False) for c in columns) + " |"
                  for r in rows]
        return "\n".join(lines)
    if fmt == "latex":
        def esc(text: str) -> str:
            return text.replace("_", "\\_").replace("%", "\\%")

        lines = ["\\begin{tabular}{l" + "r" * (len(columns) + 1) + "}", "\\toprule",
                 "method & seeds & " + " & ".join(esc(c) for c in columns) + " \\\\", "\\midrule"]
        lines += [f"{esc(r['method'])} & {r['seeds']} & " + " & ".join(_cell(r[c], True) for c in columns) + " \\\\"
                  for r in rows]
        return "\n".join(lines + ["\\bottomrule", "\\end{tabular}"])
    raise ValueError(f"unknown table format {fmt!r}: markdown or latex")


def run_compare(preset: str, methods: list[str], seeds: list[int], overrides: list[str],
                tracking_uri: str | None, out: str | None, experiment: str | None,
                workers: int = 1) -> tuple[list[Outcome], str]:
    """Every (method, seed) run of ``preset``, one after another or, with ``workers`` > 1, in that
    many spawned processes (each run's torch threads default to the CPU count over ``workers``:
    on a small model two 1-thread runs side by side do more than one 2-thread run)."""
    import os

    from tempo_bench.config import load_config
    from tempo_bench.policy import check_inputs

    base = list(overrides) + ([f"out={out}"] if out else [])
    if workers > 1 and not any(o.startswith("threads=") for o in base):
        base.append(f"threads={max(1, (os.cpu_count() or 1) // workers)}")
    configs = {(m, s): load_config(preset, base + [f"method={m}", f"seed={s}"]) for m in methods for s in seeds}
    first = next(iter(configs.values()))
    check_inputs(first)  # every bad input fails here, before the first run
    out_dir = Path(first.out)
    from tempo_bench.loggers import default_tracking_uri

    uri = tracking_uri or first.log.tracking_uri or default_tracking_uri(out_dir)
    from tempo_bench.cli import check_tracking

    check_tracking(uri)
    experiment = experiment or f"compare-{first.preset}"
    print(f"tempo-bench compare: {len(methods)} methods x {len(seeds)} seeds on preset {first.preset}"
          + (f", {workers} runs at a time" if workers > 1 else ""))
    print(f"  MLflow: {uri}  experiment={experiment}")
    jobs = [(method, seed, config.model_dump(), uri, experiment, str(out_dir), workers == 1)
            for (method, seed), config in configs.items()]
    if workers == 1:
        outcomes = []
        for i, job in enumerate(jobs, 1):
            print(f"[{i}/{len(jobs)}] {job[0]} seed {job[1]}")
            outcomes.append(_run_one(*job))
        return outcomes, uri
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from mlflow.tracking import MlflowClient
    from tqdm.auto import tqdm

    from tempo_bench.loggers import ensure_experiment

    ensure_experiment(MlflowClient(tracking_uri=uri), experiment, out_dir / "mlartifacts")

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = {pool.submit(_run_one, *job): job for job in jobs}
        done: dict[tuple[str, int], Outcome] = {}
        with tqdm(total=len(jobs), desc="runs") as bar:
            for future in as_completed(futures):
                method, seed = futures[future][:2]
                try:
                    outcome = future.result()
                except Exception as err:  # a worker died (the pool then fails what it had left):
                    # recorded as failed; the finished runs and their MLflow data are kept
                    outcome = Outcome(method, seed, error=f"{type(err).__name__}: {err}")
                done[(method, seed)] = outcome
                final = outcome.values.get("eval/mean_at_k@final", math.nan)
                bar.write(f"{method} seed {seed}: " + (f"FAILED: {outcome.error}" if outcome.error
                                                      else f"final mean@k {final:.3f}"))
                bar.update(1)
    return [done[job[:2]] for job in jobs], uri


def _run_one(method: str, seed: int, config_dict: dict, uri: str, experiment: str, out_dir: str,
             progress: bool) -> Outcome:
    """One run of a comparison, logged to MLflow; a failure is recorded, not raised."""
    from tempo_bench.cli import _quiet_libraries
    from tempo_bench.config import RunConfig

    _quiet_libraries()  # a spawned worker starts without the CLI's settings
    from tempo_bench.loggers import MLflowLogger
    from tempo_bench.loop import run_name_of, run_ttt

    config = RunConfig.model_validate(config_dict)
    name = run_name_of(method, seed)
    outcome = Outcome(method, seed)
    try:
        logger = MLflowLogger(uri, experiment, name, artifact_root=Path(out_dir) / "mlartifacts")
        outcome.run_id = logger.run_id
        with logger:
            result = run_ttt(config, logger, out_dir=Path(out_dir) / experiment / f"{name}-{logger.run_id[:8]}",
                             progress=progress)
        outcome.values = summarise(result)
    except Exception as err:  # one failed run must not lose the others
        outcome.error = f"{type(err).__name__}: {err}"
        print(f"  FAILED {method} seed {seed}: {outcome.error}")
        traceback.print_exc()
    return outcome
