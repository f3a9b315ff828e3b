"""`tempo-bench figures`: every figure (PNG and PDF) and the results tables of one MLflow
experiment. A figure whose runs the experiment lacks is skipped with the command that makes them.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pandas as pd
from tempo_bench.analysis import figures as F
from tempo_bench.analysis.runs import (
    describe_skipped,
    load_experiment,
    load_reliability,
    load_run_table,
)

from tempo_bench.core.stats import probability_of_improvement_ci
from tempo_bench.experiments.results import Outcome, results_table, summarise
from tempo_bench.methods.catalog import method_names

MAIN_METRIC = "eval/mean_at_k"


def outcomes_of(df: pd.DataFrame, collapse_tolerance: float = 0.05):
    """compare.Outcome per run, summarised exactly as `tempo-bench compare` does."""
    outcomes = []
    for (run_id, method, seed), run in df.groupby(["run_id", "method", "seed"], sort=False):
        wide = run.pivot_table(index="step", columns="metric", values="value", aggfunc="last")
        evals = {s: row.dropna().to_dict() for s, row in wide.filter(like="eval/").iterrows()
                 if row.notna().any()}
        steps = {s: row.dropna().to_dict() for s, row in wide.iterrows() if s >= 1}
        if not evals:
            continue
        outcomes.append(Outcome(method, int(seed), run_id, summarise(SimpleNamespace(evals=evals, steps=steps),
                                                                         collapse_tolerance=collapse_tolerance)))
    order = {m: i for i, m in enumerate(method_names())}
    return sorted(outcomes, key=lambda o: (order.get(o.method, len(order)), o.seed))


def improvement_table(outcomes, reference: str = "tempo", key: str = f"{MAIN_METRIC}@final") -> str:
    """P(reference beats method) on the final accuracy, with its 95% interval, per other method."""
    ref = [o.values[key] for o in outcomes if o.method == reference]
    if len(ref) < 1:
        return ""
    lines = [f"| P({F.LABELS.get(reference, reference)} > method), final mean@k | value [95% CI] |", "|---|---|"]
    for method in dict.fromkeys(o.method for o in outcomes):
        other = [o.values[key] for o in outcomes if o.method == method]
        if method == reference or not other:
            continue
        p, low, high = probability_of_improvement_ci(ref, other)
        lines.append(f"| {F.LABELS.get(method, method)} | {p:.2f} [{low:.2f}, {high:.2f}] |")
    return "\n".join(lines)


def write_report(experiment: str, tracking_uri: str | None, out: Path, refresh: bool = False,
                 include_partial: bool = False, collapse_tolerance: float = 0.05) -> list[Path]:
    """Write every figure the experiment's runs allow, and the tables; returns the files written.
    Only finished runs count, each experiment once (analysis.runs.select_runs), unless
    ``include_partial`` adds unfinished ones labelled "(partial)"."""
    out.mkdir(parents=True, exist_ok=True)
    df = load_experiment(experiment, tracking_uri, cache_dir=out / ".cache", refresh=refresh,
                         include_partial=include_partial)
    skipped = df.attrs.get("skipped", [])
    print(f"  counted {df.run_id.nunique() if not df.empty else 0} run(s); {describe_skipped(skipped)}")
    if df.empty:
        raise ValueError(f"experiment {experiment!r} has no finished training runs"
                         + (f" ({describe_skipped(skipped)})" if skipped else ""))
    runs = load_run_table(experiment, tracking_uri, include_partial=include_partial)
    written: list[Path] = []

    def save(name: str, make, needs: str | None, command: str) -> None:
        if needs is not None and (df.metric == needs).sum() == 0:
            print(f"  skipped {name}: no {needs} in this experiment; runs from `{command}` have it")
            return
        try:
            fig = make()
        except ValueError as err:  # the figure's own check on what it needs
            print(f"  skipped {name}: {err}; runs from `{command}` have it")
            return
        for suffix in ("png", "pdf"):
            path = out / f"{name}.{suffix}"
            fig.savefig(path, dpi=150, bbox_inches="tight")
            written.append(path)
        print(f"  wrote {name}.png / .pdf")

    compare_cmd = "tempo-bench compare --preset toy --methods all --seeds 0,1,2"
    save("accuracy_vs_step", lambda: F.accuracy_vs_step(df, MAIN_METRIC), MAIN_METRIC, compare_cmd)
    save("accuracy_vs_compute", lambda: F.accuracy_vs_compute(df, MAIN_METRIC), MAIN_METRIC, compare_cmd)
    save("reward_quality", lambda: F.reward_quality(df), "reward/pointbiserial", compare_cmd)
    save("diversity", lambda: F.diversity(df), "eval/pass_at_1", compare_cmd)
    save("recal_sweep", lambda: F.recal_sweep(df, runs, MAIN_METRIC) if _is_interval_sweep(runs)
         else _raise("fewer than two recalibration intervals among the tempo runs"), None,
         "tempo-bench sweep sweeps/recal_interval.yaml")
    tempo_runs = runs[runs.method == "tempo"].sort_values(["seed", "trial"])
    save("reliability", lambda: F.reliability_diagram(
        load_reliability(tempo_runs.run_id.iloc[0], tracking_uri) if len(tempo_runs) else {}),
        None, "tempo-bench run --preset toy --method tempo")

    save("best_vs_last", lambda: F.best_vs_last(df, MAIN_METRIC, collapse_tolerance), MAIN_METRIC, compare_cmd)
    outcomes = outcomes_of(df, collapse_tolerance)
    for fmt, suffix in (("markdown", "md"), ("latex", "tex")):
        path = out / f"results.{suffix}"
        text = results_table(outcomes, fmt)
        if fmt == "markdown":
            text = f"Experiment `{experiment}`: final metrics per method, mean over seeds [95% CI].\n\n{text}\n"
            improvement = improvement_table(outcomes)
            text += f"\n{improvement}\n" if improvement else ""
        path.write_text(text + "\n")
        written.append(path)
    print("  wrote results.md / results.tex")
    return written


def _is_interval_sweep(runs: pd.DataFrame) -> bool:
    param = "params.methods.tempo.recal_interval"
    tempo = runs[runs.method == "tempo"]
    return param in tempo and tempo[param].nunique() >= 2


def _raise(message: str):
    raise ValueError(message)

