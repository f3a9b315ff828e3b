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
    load_rollouts,
    load_run_table,
)

from tempo_bench.core.metrics import question_flips
from tempo_bench.core.stats import mean_ci, probability_of_improvement_ci
from tempo_bench.experiments.results import Outcome, results_table, summarise
from tempo_bench.methods.catalog import method_names

MAIN_METRIC = "eval/mean_at_k"
INTERVAL = "params.methods.tempo.recal_interval"


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
    for metric in sorted(m for m in df.metric.unique() if m.startswith("eval_") and m.endswith("/mean_at_k")):
        name = metric.split("/")[0].removeprefix("eval_")  # a benchmark of eval.tasks
        save(f"accuracy_vs_step_{name}", lambda metric=metric, name=name: F.accuracy_vs_step(
            df, metric, f"Accuracy on {name} (eval.tasks) during test-time training"), metric, compare_cmd)
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
    written += _write_question_flips(experiment, runs, tracking_uri, out)
    if _is_interval_sweep(runs):
        path = out / "results_by_interval.md"
        path.write_text(f"Experiment `{experiment}`: TEMPO per recalibration interval K, mean over runs "
                        f"[95% CI].\n\n{interval_table(df, runs)}\n")
        written.append(path)
        print("  wrote results_by_interval.md")
    return written


def _write_question_flips(experiment: str, runs: pd.DataFrame, tracking_uri: str | None, out: Path) -> list[Path]:
    """per_question.md from the runs' per-sample rollouts (skipped, saying so, where they were not logged)."""
    try:
        rollouts = pd.concat([load_rollouts(run_id, tracking_uri) for run_id in runs.run_id])
    except ValueError as err:
        print(f"  skipped per_question.md: {err}")
        return []
    path = out / "per_question.md"
    path.write_text(f"Experiment `{experiment}`: test questions gained and lost between the first and the last "
                    f"evaluation (a question counts as right at mean@k >= 0.5).\n\n"
                    f"{question_flip_table(rollouts, runs)}\n")
    print("  wrote per_question.md")
    return [path]


def question_flip_table(rollouts: pd.DataFrame, runs: pd.DataFrame) -> str:
    """Markdown: per method, how many test questions its runs gained and lost between their first
    and last evaluation (mean over runs; core.metrics.question_flips on each run's sampled rows),
    and the questions that flipped in any run, with their mean@k first and last (mean over runs).
    rollouts: the per-sample rows of analysis.runs.load_rollouts; runs: run_id -> method."""
    sampled = rollouts[~rollouts.greedy & (rollouts["task"].isna() if "task" in rollouts else True)]
    accuracy = sampled.groupby(["run_id", "step", "question_id"]).correct.mean()
    flips = []
    for run_id, per_step in accuracy.groupby(level="run_id"):
        steps = per_step.index.get_level_values("step")
        first, last = (per_step.xs((run_id, s), level=("run_id", "step")).to_dict() for s in (steps.min(), steps.max()))
        flips += [{"run_id": run_id, **row} for row in question_flips(first, last)]
    table = pd.DataFrame(flips).merge(runs[["run_id", "method"]], on="run_id")
    lines = ["| method | runs | questions gained | questions lost |", "|---|---|---|---|"]
    for method, sub in table.groupby("method"):
        per_run = sub.groupby("run_id").flip.agg(gained=lambda f: (f == "gained").sum(), lost=lambda f: (f == "lost").sum())
        lines.append(f"| {method} | {len(per_run)} | {per_run.gained.mean():.1f} | {per_run.lost.mean():.1f} |")
    lines += ["", "| method | question | mean@k first | mean@k last | runs gained | runs lost |", "|---|---|---|---|---|---|"]
    moved = table[table.flip != ""]
    for (method, question), sub in table[table.question_id.isin(moved.question_id)].groupby(["method", "question_id"]):
        lines.append(f"| {method} | {question} | {sub['first'].mean():.3f} | {sub['last'].mean():.3f} | "
                     f"{(sub.flip == 'gained').sum()} | {(sub.flip == 'lost').sum()} |")
    return "\n".join(lines)


def _is_interval_sweep(runs: pd.DataFrame) -> bool:
    tempo = runs[runs.method == "tempo"]
    return INTERVAL in tempo and tempo[INTERVAL].nunique() >= 2


def _last_steps_mean(df: pd.DataFrame, metric: str, window: int) -> pd.Series:
    """run_id -> the mean of ``metric`` over the run's last ``window`` training steps."""
    sub = df[(df.metric == metric) & (df.step >= 1)].sort_values("step")
    return sub.groupby("run_id").tail(window).groupby("run_id").value.mean()


INTERVAL_COLUMNS = ("final mean@k", "critic P(correct) - truth", "reward AUROC-w", "critic gap ECE",
                    "critic test ECE", "critic probe ECE", "E-steps", "critic tokens")


def interval_values(df: pd.DataFrame, window: int = 5) -> pd.DataFrame:
    """Per run (index run_id), what the interval sweep trades: final accuracy; over the last
    ``window`` training steps, the critic's belief against the truth on the trained rows (its
    P(correct) = (V + 1) / 2 from the mean reward, minus their true accuracy: positive means
    over-confident), its within-question ranking (AUROC) and its transfer gap (test minus probe
    ECE, and both ECEs); and its cost: E-steps run and critic tokens (training and E-step rollouts)."""
    columns = [
        F.final_per_run(df, MAIN_METRIC),
        (_last_steps_mean(df, "reward/mean", window) + 1) / 2 - _last_steps_mean(df, "reward/gt_mean", window),
        _last_steps_mean(df, "reward/auroc_within", window),
        _last_steps_mean(df, "critic/gap/ece", window),
        _last_steps_mean(df, "critic/test/ece", window),
        _last_steps_mean(df, "critic/probe/ece", window),
        F.final_per_run(df, "critic/estep_count"),
        F.critic_tokens(df),
    ]
    return pd.concat(columns, axis=1, keys=INTERVAL_COLUMNS)


def interval_table(df: pd.DataFrame, runs: pd.DataFrame, window: int = 5) -> str:
    """The recalibration-interval sweep as a markdown table: one row per K (shortest first,
    "never" last), each cell the mean over that K's runs [95% CI] of interval_values."""
    tempo = runs[runs.method == "tempo"]
    k_of = tempo.set_index("run_id")[INTERVAL].map(F.interval_label).dropna()
    values = interval_values(df, window).reindex(k_of.index)
    lines = [f"| K | runs | {' | '.join(INTERVAL_COLUMNS)} |", "|" + "---|" * (len(INTERVAL_COLUMNS) + 2)]
    for k in F.interval_order(k_of):
        chosen = values[(k_of == k).to_numpy()]
        cells = [_interval_cell(mean_ci(chosen[c].to_numpy(dtype=float)), INTERVAL_FORMATS.get(c, ".3f"))
                 for c in INTERVAL_COLUMNS]
        lines.append(f"| {k} | {len(chosen)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


INTERVAL_FORMATS = {"critic P(correct) - truth": "+.3f", "critic gap ECE": "+.3f", "E-steps": ",.0f",
                    "critic tokens": ",.0f"}


def _interval_cell(stats: tuple[float, float, float], fmt: str) -> str:
    """"0.835 [0.832, 0.840]"; counts without an interval; "-" where no run logged the metric."""
    mean, low, high = stats
    if mean != mean:
        return "-"
    if fmt.endswith(".0f") or low != low:
        return format(mean, fmt)
    return f"{format(mean, fmt)} [{format(low, fmt)}, {format(high, fmt)}]"


def _raise(message: str):
    raise ValueError(message)

