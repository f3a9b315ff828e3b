"""The paper's figures from logged runs: one function per figure, a tidy DataFrame in
(analysis.runs.load_experiment), a matplotlib Figure out, no file I/O inside.

Every figure draws each method in the same colour (seaborn's colour-blind palette, fixed order),
a line for the mean over seeds and a band for its 95% stratified-bootstrap interval.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from tempo_bench.core.stats import stratified_bootstrap_ci
from tempo_bench.experiments.results import best_step, collapse_step
from tempo_bench.methods.catalog import method_names

LABELS = {
    "standard_ttt": "standard TTT", "fixed_critic": "fixed critic", "online_critic": "online critic",
    "tempo": "TEMPO", "labeled_rlvr": "labeled RLVR", "empo": "EMPO", "oracle": "oracle (test labels)",
    "self_certainty": "self-certainty (Intuitor)", "entropy_min": "entropy min (RENT)", "random_reward": "random reward",
}
NEVER = "never"  # the x label of recal_interval = None (no E-step after the start)


# indices into seaborn's colour-blind palette: hues far apart for the four methods the paper
# compares, grey (dashed) for the oracle
PALETTE_INDEX = {"standard_ttt": 0, "fixed_critic": 1, "online_critic": 2, "tempo": 4, "labeled_rlvr": 5,
                 "empo": 9, "oracle": 7, "self_certainty": 3, "entropy_min": 6, "random_reward": 8}


def method_colors() -> dict[str, tuple]:
    import seaborn as sns

    palette = sns.color_palette("colorblind", 10)
    return {m: palette[i] for m, i in PALETTE_INDEX.items()}


def _methods(df: pd.DataFrame) -> list[str]:
    present = set(df.method.dropna())
    known = method_names()
    return [m for m in known if m in present] + sorted(present - set(known))


def _color(method: str):
    return method_colors().get(method, (0.3, 0.3, 0.3))


def _figure(ncols: int = 1, width: float = 5.5):
    import matplotlib

    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, ncols, figsize=(width * ncols, 3.8), squeeze=False)
    return fig, list(axes[0])


def band(values: pd.DataFrame, x: str) -> pd.DataFrame:
    """values: columns [x, seed, value] -> per x: mean and 95% CI over seeds."""
    rows = []
    for xv, group in values.groupby(x):
        mean, low, high = stratified_bootstrap_ci(group.value.to_numpy(), n_resamples=2000)
        rows.append({x: xv, "mean": mean, "low": low, "high": high, "seeds": len(group)})
    return pd.DataFrame(rows).sort_values(x)


def _plot_band(ax, table: pd.DataFrame, x: str, method: str) -> None:
    color = _color(method)
    ax.plot(table[x], table["mean"], color=color, label=LABELS.get(method, method), lw=1.8,
            ls="--" if method == "oracle" else "-")
    ok = table.dropna(subset=["low", "high"])
    ax.fill_between(ok[x], ok["low"], ok["high"], color=color, alpha=0.2, lw=0)


def _metric(df: pd.DataFrame, metric: str, method: str | None = None) -> pd.DataFrame:
    sub = df[df.metric == metric]
    return sub if method is None else sub[sub.method == method]


def _finish(fig, axes, title: str | None = None):
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:  # outside the plots, so that no line hides behind it
        axes[-1].legend(handles, labels, fontsize=8, frameon=False, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def accuracy_vs_step(df: pd.DataFrame, metric: str = "eval/mean_at_k",
                     title: str = "Accuracy during test-time training (mean over seeds, 95% CI)"):
    """Accuracy on the test questions (or an eval.tasks benchmark's: eval_<name>/...) against
    training step, one line per method."""
    fig, (ax,) = _figure()
    for method in _methods(df):
        sub = _metric(df, metric, method)
        if not sub.empty:
            _plot_band(ax, band(sub, "step"), "step", method)
    ax.set(xlabel="training step", ylabel=metric.split("/")[-1].replace("_at_", "@"))
    return _finish(fig, [ax], title)


def accuracy_vs_compute(df: pd.DataFrame, metric: str = "eval/mean_at_k", points: int = 40):
    """Accuracy against tokens spent (rollouts, policy, critic and E-step rollouts): each seed's
    curve is interpolated onto a common grid up to the smallest budget any seed reached."""
    fig, (ax,) = _figure()
    for method in _methods(df):
        sub = _metric(df, metric, method)
        if sub.empty:
            continue
        curves = [g.sort_values("tokens") for _, g in sub.groupby("run_id")]
        top = min(c.tokens.max() for c in curves)
        grid = np.linspace(0, top, points)
        rows = [{"tokens": t, "seed": i, "value": v} for i, c in enumerate(curves)
                for t, v in zip(grid, np.interp(grid, c.tokens, c.value))]
        _plot_band(ax, band(pd.DataFrame(rows), "tokens"), "tokens", method)
    ax.set(xlabel="tokens spent (rollout + policy + critic)", ylabel=metric.split("/")[-1].replace("_at_", "@"))
    ax.ticklabel_format(axis="x", style="sci", scilimits=(0, 0))
    return _finish(fig, [ax], "Accuracy against compute (mean over seeds, 95% CI)")


def reward_quality(df: pd.DataFrame, window: int = 5,
                   metrics: tuple[str, ...] = ("reward/pointbiserial", "reward/auroc_within")):
    """How well each method's reward tracks true correctness on the test rows, per step
    (smoothed by a rolling mean over ``window`` steps within each run before averaging seeds)."""
    fig, axes = _figure(len(metrics))
    for ax, metric in zip(axes, metrics):
        for method in _methods(df):
            sub = _metric(df, metric, method).dropna(subset=["value"])
            if sub.empty:
                continue
            sub = sub.sort_values("step").assign(
                value=lambda d: d.groupby("run_id").value.transform(lambda v: v.rolling(window, min_periods=1).mean()))
            _plot_band(ax, band(sub, "step"), "step", method)
        ax.set(xlabel="training step", ylabel=metric.split("/")[-1].replace("_", "-"))
        if "auroc" in metric:
            ax.axhline(0.5, color="grey", lw=0.8, ls=":")
        else:
            ax.axhline(0.0, color="grey", lw=0.8, ls=":")
    return _finish(fig, axes, f"Reward quality on the unlabeled rows (rolling mean over {window} steps)")


def diversity(df: pd.DataFrame):
    """Left: pass@j against j at the final evaluation. Right: distinct answers per question
    against step."""
    fig, (left, right) = _figure(2)
    pass_keys = sorted({m for m in df.metric.unique() if m.startswith("eval/pass_at_") and m[13:].isdigit()},
                       key=lambda m: int(m[13:]))
    for method in _methods(df):
        sub = df[(df.method == method) & df.metric.isin(pass_keys)]
        if not sub.empty:
            last = sub.groupby("run_id").step.transform("max")
            final = sub[sub.step == last].assign(k=lambda d: d.metric.str[13:].astype(int))
            _plot_band(left, band(final, "k"), "k", method)
        distinct = _metric(df, "eval/distinct_answers", method)
        if not distinct.empty:
            _plot_band(right, band(distinct, "step"), "step", method)
    left.set(xlabel="k (samples per question)", ylabel="pass@k at the final step")
    right.set(xlabel="training step", ylabel="distinct answers per question")
    return _finish(fig, [left, right], "Diversity: pass@k and distinct answers (mean over seeds, 95% CI)")


def recal_sweep(df: pd.DataFrame, runs: pd.DataFrame, metric: str = "eval/mean_at_k",
                param: str = "params.methods.tempo.recal_interval"):
    """The recalibration-interval sweep: final accuracy and the critic's cost (critic training +
    E-step rollout tokens) against K, one point per run, mean and 95% CI per K."""
    if param not in runs:
        raise ValueError(f"the runs have no parameter {param!r}: not a recalibration-interval sweep")
    k_of = runs.set_index("run_id")[param].map(interval_label)
    finals = _final(df, metric).assign(K=lambda d: d.run_id.map(k_of))
    costs = critic_tokens(df).rename("value").reset_index().assign(K=lambda d: d.run_id.map(k_of))
    order = interval_order(k_of)
    fig, (left, right) = _figure(2)
    for ax, data, label in ((left, finals, f"final {metric.split('/')[-1].replace('_at_', '@')}"),
                            (right, costs, "critic tokens (training + E-step rollouts)")):
        data = data.dropna(subset=["K"]).assign(x=lambda d: d.K.map(order.index))
        table = band(data.rename(columns={"x": "xpos"}), "xpos")
        ax.errorbar(table.xpos, table["mean"], yerr=[table["mean"] - table["low"].fillna(table["mean"]),
                                                     table["high"].fillna(table["mean"]) - table["mean"]],
                    color=_color("tempo"), marker="o", capsize=3, label=LABELS["tempo"])
        ax.scatter(data.x, data.value, color=_color("tempo"), alpha=0.35, s=12)
        ax.set_xticks(range(len(order)), [str(k) for k in order])
        ax.set(xlabel="recalibration interval K (steps between E-steps)", ylabel=label)
    return _finish(fig, [left, right], "TEMPO's recalibration interval (points: runs; bars: mean, 95% CI)")


def interval_label(value) -> str | None:
    """A logged recal_interval parameter as a label: "5", or "never" for None (no E-step after
    the start); None where the run has no such parameter."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return NEVER if str(value) in ("None", "null", "") else str(int(float(value)))


def interval_order(labels) -> list[str]:
    """The distinct interval labels, shortest interval first, "never" last."""
    return sorted({k for k in labels if k is not None and k == k},
                  key=lambda k: math.inf if k == NEVER else float(k))


def _final(df: pd.DataFrame, metric: str) -> pd.DataFrame:
    sub = _metric(df, metric)
    return sub[sub.step == sub.groupby("run_id").step.transform("max")][["run_id", "seed", "value"]]


def final_per_run(df: pd.DataFrame, metric: str) -> pd.Series:
    """run_id -> the value of ``metric`` at the run's last logged step."""
    return _final(df, metric).set_index("run_id").value


def critic_tokens(df: pd.DataFrame) -> pd.Series:
    """run_id -> the critic's cost at the end of the run: its training tokens plus the E-steps'
    own rollout tokens."""
    return final_per_run(df, "tokens/critic").add(final_per_run(df, "tokens/estep_rollout"), fill_value=0)


def reliability_diagram(reliability: dict[int, dict], steps: list[int] | None = None):
    """The critic's reliability diagram at chosen E-steps: observed accuracy against predicted
    P(correct) per bin, before and after the recalibration (marker area ~ rows in the bin).
    reliability: E-step -> {"before": bins, "after": bins} (the run's critic/reliability_*.json)."""
    if not reliability:
        raise ValueError("no reliability data: the run made no E-step")
    steps = steps or _spread(sorted(reliability), 3)
    fig, axes = _figure(len(steps), width=3.6)
    for ax, step in zip(axes, steps):
        for when, color, style in (("before", (0.55, 0.55, 0.55), "--"), ("after", _color("tempo"), "-")):
            bins = reliability[step][when]
            total = sum(b["count"] for b in bins) or 1
            ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], style, color=color,
                    label=f"{when} E-step")
            ax.scatter([b["confidence"] for b in bins], [b["accuracy"] for b in bins], color=color,
                       s=[400 * b["count"] / total + 8 for b in bins], alpha=0.7)
        ax.plot([0, 1], [0, 1], color="black", lw=0.8, ls=":")
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="predicted P(correct)", ylabel="observed accuracy",
               title=f"E-step at step {step}")
    return _finish(fig, axes, "Critic reliability on fresh labeled rollouts")


def _spread(items: list, n: int) -> list:
    if len(items) <= n:
        return items
    return [items[round(i * (len(items) - 1) / (n - 1))] for i in range(n)]


ALL_FIGURES = ("accuracy_vs_step", "accuracy_vs_compute", "reward_quality", "diversity", "recal_sweep",
               "reliability")


def best_vs_last(df: pd.DataFrame, metric: str = "eval/mean_at_k", collapse_tolerance: float = 0.05):
    """Per method: the last evaluation and the best one after step 0 (mean over seeds, 95% CI),
    with the step-0 value as a line, and how many seeds collapsed (mean@k below step 0 minus
    ``collapse_tolerance`` from some evaluation to the end)."""
    fig, (ax,) = _figure(width=max(5.5, 0.9 * len(_methods(df))))
    sub = _metric(df, metric)
    methods, ticks = _methods(sub), []
    for x, method in enumerate(methods):
        runs = [dict(zip(r.step, r.value)) for _, r in sub[sub.method == method].groupby("run_id")]
        last = [t[max(t)] for t in runs]
        best = [best_step(t)[1] for t in runs]
        collapsed = sum(collapse_step(t, collapse_tolerance) is not None for t in runs)
        for offset, values, marker, label in ((-0.15, last, "o", "last"), (0.15, best, "^", "best (after step 0)")):
            values = [v for v in values if np.isfinite(v)]
            if not values:
                continue
            mean, low, high = stratified_bootstrap_ci(np.asarray(values))
            ax.errorbar(x + offset, mean, yerr=[[mean - low], [high - mean]] if np.isfinite(low) else None,
                        fmt=marker, color=_color(method), label=label if x == 0 else None, capsize=3)
        ticks.append(f"{LABELS.get(method, method)}\n{collapsed}/{len(runs)} collapsed")
    initial = sub[sub.step == 0].value
    if len(initial):
        ax.axhline(float(initial.mean()), color="grey", lw=0.8, ls=":", label="step 0")
    ax.set_xticks(range(len(methods)), ticks, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(metric.split("/")[-1].replace("_at_", "@"))
    return _finish(fig, [ax], "last vs best evaluation")

