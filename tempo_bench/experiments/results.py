"""The results table of a comparison: one row per method, each cell the mean over seeds with its
95% stratified-bootstrap interval, from a run's logged history. Shared by ``tempo-bench compare``
and the analysis (``tempo-bench figures``)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np

from tempo_bench.core.stats import mean_ci
from tempo_bench.methods.catalog import uses_test_labels

# (column, metric key, where): "initial" / "final" = first / last eval, "start" / "end" = first /
# last training steps; "best" / "best_step" = the best evaluation after step 0 and its step;
# "collapse" = the collapse step (collapse_step), shown as how many seeds collapsed and when
TABLE = [
    ("mean@k last", "eval/mean_at_k", "final"),
    ("mean@k best", "eval/mean_at_k", "best"),
    ("best step", "eval/mean_at_k", "best_step"),
    ("collapsed", "eval/mean_at_k", "collapse"),
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


@dataclass
class Outcome:
    method: str
    seed: int
    run_id: str | None = None
    values: dict[str, float] = field(default_factory=dict)
    error: str | None = None


def collapse_step(trajectory: dict[int, float], tolerance: float) -> int | None:
    """The first evaluation from which the metric stays below its step-0 value minus
    ``tolerance`` to the end of the run (None: it never does, or the run has no step 0)."""
    if 0 not in trajectory:
        return None
    line, since = trajectory[0] - tolerance, None
    for step in sorted(s for s in trajectory if s > 0):
        below = trajectory[step] < line
        since = (since if since is not None else step) if below else None
    return since


def best_step(trajectory: dict[int, float]) -> tuple[int | None, float]:
    """(step, value) of the best evaluation after step 0 (the first of ties); (None, NaN) if none."""
    trained = {s: v for s, v in trajectory.items() if s > 0 and np.isfinite(v)}
    if not trained:
        return None, math.nan
    step = max(sorted(trained), key=lambda s: trained[s])
    return step, trained[step]


def _trajectory_summary(evals, key: str, tolerance: float) -> dict[str, float]:
    trajectory = {s: v[key] for s, v in evals.items() if key in v}
    step, value = best_step(trajectory)
    collapsed = collapse_step(trajectory, tolerance)
    return {f"{key}@best": value, f"{key}@best_step": math.nan if step is None else float(step),
            f"{key}@collapse": math.nan if collapsed is None else float(collapsed)}


def summarise(result, window: int = 5, collapse_tolerance: float = 0.05) -> dict[str, float]:
    """The table's numbers from one run: the last and the best evaluation, the collapse step, and
    reward quality averaged over the first and the last ``window`` training steps (one step's
    figure is noisy)."""
    out: dict[str, float] = _trajectory_summary(result.evals, "eval/mean_at_k", collapse_tolerance)
    evals = {"initial": result.evals[min(result.evals)], "final": result.evals[max(result.evals)]}
    steps = sorted(result.steps)
    for _, key, where in TABLE:
        if where in ("best", "best_step", "collapse"):
            continue
        if where in evals:
            out[f"{key}@{where}"] = evals[where].get(key, math.nan)
        else:
            chosen = steps[:window] if where == "start" else steps[-window:]
            vals = [result.steps[s].get(key, math.nan) for s in chosen]
            vals = [v for v in vals if np.isfinite(v)]
            out[f"{key}@{where}"] = float(np.mean(vals)) if vals else math.nan
    return out


PARTIAL = " (partial)"  # the label suffix of a run that did not finish (figures --include-partial)


def results_cells(outcomes: list[Outcome]) -> list[dict]:
    """One row per method: the method label, its seed count, and per TABLE column the mean over
    seeds with its 95% stratified-bootstrap interval, as (mean, low, high)."""
    rows = []
    for method in dict.fromkeys(o.method for o in outcomes):
        done = [o for o in outcomes if o.method == method and o.error is None]
        # a label such as "tempo (partial)" (figures --include-partial) names the method before it
        labels = uses_test_labels(method.removesuffix(PARTIAL))
        row = {"method": method + (" (test labels)" if labels else ""), "seeds": len(done)}
        for column, key, where in TABLE:
            values = [o.values.get(f"{key}@{where}", math.nan) for o in done]
            row[column] = (_collapse_cell(values) if where == "collapse" else _step_cell(values) if where == "best_step"
                           else mean_ci(values))
        rows.append(row)
    return rows


def _step_cell(steps: list[float]) -> str:
    """"12" for one seed, "12.5 (10-15)" for several: mean and range of a step over seeds."""
    steps = [s for s in steps if np.isfinite(s)]
    if not steps:
        return "-"
    mean = f"{np.mean(steps):.3g}"
    return mean if len(steps) == 1 else f"{mean} ({min(steps):.0f}-{max(steps):.0f})"


def _collapse_cell(steps: list[float]) -> str:
    """"2/5 (mean step 15)": how many seeds collapsed, and when on average."""
    collapsed = [s for s in steps if np.isfinite(s)]
    if not steps:
        return "-"
    return f"{len(collapsed)}/{len(steps)}" + (f" (mean step {np.mean(collapsed):.0f})" if collapsed else "")


def _cell(value: tuple[float, float, float] | str, latex: bool) -> str:
    if isinstance(value, str):
        return value
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


def run_history(client, run_id: str) -> tuple[dict[int, dict[str, float]], dict[int, dict[str, float]]]:
    """(evals, steps) of a logged run, as run_ttt returns them: eval metrics per evaluated step,
    every metric per training step."""
    run = client.get_run(run_id)
    rows = [(m.step, key, m.value) for key in run.data.metrics for m in client.get_metric_history(run_id, key)]
    return split_history(rows)


def split_history(rows) -> tuple[dict[int, dict[str, float]], dict[int, dict[str, float]]]:
    """(step, key, value) rows -> (evals: step -> eval/* values, steps: step >= 1 -> all values)."""
    evals: dict[int, dict[str, float]] = {}
    steps: dict[int, dict[str, float]] = {}
    for step, key, value in rows:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        step = int(step)
        if key.startswith("eval/"):
            evals.setdefault(step, {})[key] = float(value)
        if step >= 1:
            steps.setdefault(step, {})[key] = float(value)
    return evals, steps


def summarise_history(evals, steps, collapse_tolerance: float = 0.05) -> dict[str, float]:
    return summarise(SimpleNamespace(evals=evals, steps=steps), collapse_tolerance=collapse_tolerance)


