"""The paper's mechanism on a long horizon (docs/long_horizon.md): from the long runs'
experiments (scripts/long_horizon.sh), where each method's accuracy plateaus, whether a critic is
exploited (its reward rises while the truth of the rewarded answers falls), how over-confident
each critic becomes, and whether a falling reward quality is the metric or the critic.

    python -m tempo_bench.analysis.long_horizon --tracking-uri sqlite:///runs/long/mlflow.db \\
        --experiments long-toy,long-toy-symmetric,long-toy-4digit --out docs/long_horizon

Definitions (each a function below, each tested on constructed curves):
- plateau: the first evaluation step t after step 0 whose seed-mean accuracy no evaluation in the
  next ``window`` steps exceeds the upper end of t's 95% interval (a percentile bootstrap over
  seeds: with 3 seeds about the best seed's value, so a gain must lift the mean above it); none if
  every such stretch still gains, or fewer than ``window`` steps follow t. A falling curve has
  plateaued by this definition (it stopped gaining); the table's final and best columns say which.
- exploited at step t: over the ``span`` steps before t, the reward's belief in the trained answers
  (critic: P(correct) = (V + 1) / 2; majority vote: the share rewarded) rose by at least ``margin``
  while the true accuracy of those answers fell by at least ``margin`` (both rolling means).
- blind at step t: over the same span the truth fell by at least 2 ``margin`` while the belief fell
  by less than ``margin`` (the reward missed the fall).
- the metric or the critic: the point-biserial correlation shrinks as the share of correct answers
  nears 0 or 1 even for a reward that separates right from wrong as well as before. Its exact
  base-rate-free counterpart, Cohen's d (core.metrics.separation_from_pointbiserial), and the
  point-biserial the run's starting separation would show at each step's accuracy tell the two apart.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from tempo_bench.analysis.figures import LABELS, _color, _finish, _figure, _methods, _plot_band, band
from tempo_bench.analysis.runs import describe_skipped, load_experiment

from tempo_bench.core.metrics import pointbiserial_from_separation, separation_from_pointbiserial
from tempo_bench.core.stats import mean_ci

CRITIC_METHODS = ("fixed_critic", "online_critic", "tempo")
REWARDED = CRITIC_METHODS + ("standard_ttt",)  # methods whose reward judges the unlabeled answers
ACCURACY = "eval/mean_at_k"
SMOOTH = 10  # steps in the rolling means of per-step training metrics
START, END = (1, 10), 10  # the first ten training steps; the last ten


def plateau(curve: pd.DataFrame, window: int = 50) -> tuple[int, float] | None:
    """(step, mean) where a method's accuracy plateaus (module docstring), from its per-evaluation
    band: columns step, mean, high (analysis.figures.band). None: no plateau within the run."""
    curve = curve.sort_values("step").reset_index(drop=True)
    last = curve.step.max()
    for i, row in curve[curve.step > 0].iterrows():  # from the first trained evaluation
        if row.step + window > last:
            return None
        ahead = curve[(curve.step > row.step) & (curve.step <= row.step + window)]
        if (ahead["mean"] <= row.high).all():
            return int(row.step), float(row["mean"])
    return None


def believed_correct(method: str, reward_mean: pd.Series) -> pd.Series:
    """The share of trained answers a method's reward calls correct: a critic's V in [-1, 1] as
    P(correct) = (V + 1) / 2; majority vote's 0/1 reward as it is."""
    return (reward_mean + 1) / 2 if method in CRITIC_METHODS else reward_mean


def per_step(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Training-step metrics (step >= 1) as one row per (run_id, step), one column per metric;
    method and seed kept."""
    sub = df[df.metric.isin(metrics) & (df.step >= 1)]
    wide = sub.pivot_table(index=["run_id", "method", "seed", "step"], columns="metric", values="value")
    return wide.reset_index().sort_values(["run_id", "step"], ignore_index=True)


def rolling(frame: pd.DataFrame, columns: list[str]) -> pd.DataFrame:
    """The columns of a per_step frame as rolling means over SMOOTH steps within each run."""
    frame = frame.copy()
    for c in columns:
        frame[c] = frame.groupby("run_id")[c].transform(lambda v: v.rolling(SMOOTH, min_periods=1).mean())
    return frame


def belief_and_truth(df: pd.DataFrame) -> pd.DataFrame:
    """Per (run, step) of the methods in REWARDED: belief (the reward's share called correct),
    truth (the share that is), overconfidence = belief - truth."""
    wide = per_step(df[df.method.isin(REWARDED)], ["reward/mean", "reward/gt_mean"])
    if wide.empty:
        return wide.assign(belief=[], truth=[], overconfidence=[])
    belief = pd.concat([believed_correct(m, g["reward/mean"]) for m, g in wide.groupby("method")])
    wide["belief"], wide["truth"] = belief.reindex(wide.index), wide["reward/gt_mean"]
    wide["overconfidence"] = wide.belief - wide.truth
    return wide


def _every_step(run: pd.DataFrame) -> pd.DataFrame:
    """One row per step from the run's first to its last (a step not logged: NaN), so that a shift
    by ``span`` rows is ``span`` steps."""
    run = run.set_index("step").sort_index()
    return run.reindex(range(int(run.index.min()), int(run.index.max()) + 1))


def exploited_steps(run: pd.DataFrame, span: int = 20, margin: float = 0.05) -> list[int]:
    """Steps at which one run is exploited (module docstring). run: columns step, belief, truth
    (rolling means), one row per step."""
    run = _every_step(run)
    rise = run.belief - run.belief.shift(span)
    fall = run.truth.shift(span) - run.truth
    return [int(s) for s in run.index[(rise >= margin) & (fall >= margin)]]


QUALITY = ["reward/pointbiserial", "reward/auroc", "reward/auroc_within", "d", "pb_if_unchanged"]


def blind_steps(run: pd.DataFrame, span: int = 20, margin: float = 0.05) -> list[int]:
    """Steps at which the reward missed a fall of the truth (module docstring); run as in
    exploited_steps."""
    run = _every_step(run)
    belief_fall = run.belief.shift(span) - run.belief
    truth_fall = run.truth.shift(span) - run.truth
    return [int(s) for s in run.index[(truth_fall >= 2 * margin) & (belief_fall < margin)]]


def separation_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Per (run, step) of the critic methods: the reward's point-biserial (pb), pooled AUROC and
    AUROC-within, the trained answers' accuracy, the separation d behind pb, and the pb the run's
    starting separation (median d over steps 1-10) would show at this step's accuracy."""
    wide = per_step(df[df.method.isin(CRITIC_METHODS)], ["reward/pointbiserial", "reward/auroc",
                                                         "reward/auroc_within", "train/accuracy"])
    if wide.empty:
        return wide
    wide["d"] = separation_from_pointbiserial(wide["reward/pointbiserial"], wide["train/accuracy"])
    first = wide[wide.step.between(*START)].groupby("run_id").d.median()
    wide["pb_if_unchanged"] = pointbiserial_from_separation(wide.run_id.map(first), wide["train/accuracy"])
    return wide


def _long(frame: pd.DataFrame, column: str) -> pd.DataFrame:
    """(run, step) rows -> the tidy [step, seed, value] band() expects."""
    return frame[["step", "seed", column]].rename(columns={column: "value"}).dropna()


def accuracy_with_plateaus(settings: dict[str, pd.DataFrame], window: int = 50):
    """Accuracy against step in each setting, one line per method, its plateau marked."""
    fig, axes = _figure(len(settings), width=4.6)
    for ax, (label, df) in zip(axes, settings.items()):
        for method in _methods(df):
            curve = band(df[(df.metric == ACCURACY) & (df.method == method)][["step", "seed", "value"]], "step")
            if curve.empty:
                continue
            _plot_band(ax, curve, "step", method)
            found = plateau(curve, window)
            if found:
                ax.plot(*found, marker="o", ms=7, mfc="white", color=_color(method))
        ax.set(title=label, xlabel="training step", ylabel="mean@k on the test questions")
    return _finish(fig, axes, f"Accuracy over 200 steps (95% CI over seeds; circle: plateau, no gain "
                              f"above its CI in the next {window} steps)")


def overconfidence(settings: dict[str, pd.DataFrame]):
    """Each critic's belief (P(correct) = (V + 1) / 2) minus the truth of the trained answers against
    step, per setting (majority vote's belief, 0.9 above the truth in the verifier regime, would
    flatten the scale: the summary table has it)."""
    fig, axes = _figure(len(settings), width=4.6)
    for ax, (label, df) in zip(axes, settings.items()):
        frame = rolling(belief_and_truth(df), ["overconfidence"])
        for method in [m for m in _methods(df) if m in CRITIC_METHODS]:
            _plot_band(ax, band(_long(frame[frame.method == method], "overconfidence"), "step"), "step", method)
        ax.axhline(0, color="grey", lw=0.8, ls=":")
        ax.set(title=label, xlabel="training step", ylabel="critic P(correct) - truly correct")
    return _finish(fig, axes, f"Critic over-confidence on the answers it rewards (rolling mean over {SMOOTH} "
                              "steps; > 0: over-confident)")


def exploitation(df: pd.DataFrame, label: str, span: int = 20, margin: float = 0.05):
    """Per method (columns), each run's belief (solid) and truth (dashed) against step, the steps
    where it is exploited shaded."""
    frame = rolling(belief_and_truth(df), ["belief", "truth"])
    methods = [m for m in _methods(df) if m in REWARDED]
    fig, axes = _figure(len(methods), width=4.2)
    for ax, method in zip(axes, methods):
        for seed, run in frame[frame.method == method].groupby("seed"):
            shade = (0.25 + 0.25 * (seed % 3),) * 3
            ax.plot(run.step, run.belief, color=shade, lw=1.3, label=f"seed {seed}: believed")
            ax.plot(run.step, run.truth, color=shade, lw=1.3, ls="--", label=f"seed {seed}: true")
            for step in exploited_steps(run, span, margin):
                ax.axvspan(step - 0.5, step + 0.5, color=_color(method), alpha=0.25, lw=0)
        ax.set(title=LABELS.get(method, method), xlabel="training step", ylabel="share of trained answers", ylim=(0, 1))
    return _finish(fig, axes, f"{label}: believed vs truly correct (shaded: exploited, belief +{margin} and truth "
                              f"-{margin} over {span} steps)")


def metric_or_critic(df: pd.DataFrame, label: str):
    """Left: each critic's reward point-biserial (solid) and the point-biserial its starting
    separation would show at the step's accuracy (dashed). Middle: the separation d. Right: the
    pooled AUROC. A dashed line that falls with the solid one is the metric; a solid one below
    it, a d that falls, is the critic."""
    frame = separation_frame(df)
    frame = rolling(frame, QUALITY) if not frame.empty else frame
    fig, axes = _figure(3, width=4.4)
    for method in [m for m in _methods(df) if m in CRITIC_METHODS]:
        runs = frame[frame.method == method]
        _plot_band(axes[0], band(_long(runs, "reward/pointbiserial"), "step"), "step", method)
        unchanged = band(_long(runs, "pb_if_unchanged"), "step")
        axes[0].plot(unchanged.step, unchanged["mean"], color=_color(method), ls="--", lw=1.2)
        _plot_band(axes[1], band(_long(runs, "d"), "step"), "step", method)
        _plot_band(axes[2], band(_long(runs, "reward/auroc"), "step"), "step", method)
    axes[0].set(xlabel="training step", ylabel="point-biserial (dashed: at the starting separation)")
    axes[1].set(xlabel="training step", ylabel="separation d (Cohen's d)")
    axes[2].set(xlabel="training step", ylabel="pooled AUROC")
    axes[2].axhline(0.5, color="grey", lw=0.8, ls=":")
    return _finish(fig, axes, f"{label}: falling reward quality, the metric or the critic? (rolling mean over "
                              f"{SMOOTH} steps, 95% CI over seeds)")


def _start_end(frame: pd.DataFrame, column: str) -> str:
    """"start -> end": the mean over runs of each run's mean over the first and the last ten
    training steps; "-" where the column is absent or empty."""
    if column not in frame or frame[column].isna().all():
        return "-"
    last = frame.groupby("run_id").step.transform("max")
    start = frame[frame.step.between(*START)].groupby("run_id")[column].mean().mean()
    end = frame[frame.step > last - END].groupby("run_id")[column].mean().mean()
    return f"{start:.2f} -> {end:.2f}"


def _flagged(frame: pd.DataFrame, detector, span: int, margin: float) -> str:
    """"k/n (from step a, b)": the runs ``detector`` flags at some step, and the first step of each."""
    frame = rolling(frame, ["belief", "truth"])
    firsts = [steps[0] for _, run in frame.groupby("run_id") if (steps := detector(run, span, margin))]
    runs = frame.run_id.nunique()
    return f"{len(firsts)}/{runs}" + (f" (from step {', '.join(map(str, sorted(firsts)))})" if firsts else "")


def summary_rows(df: pd.DataFrame, window: int = 50, span: int = 20, margin: float = 0.05) -> list[dict]:
    """One row per method of one setting: accuracy at step 0, best, final and at the plateau;
    reward quality, separation, over-confidence (start -> end) and exploited runs."""
    beliefs, separations = belief_and_truth(df), separation_frame(df)
    rows = []
    for method in _methods(df):
        acc = df[(df.metric == ACCURACY) & (df.method == method)]
        curve = band(acc[["step", "seed", "value"]], "step")
        finals = acc[acc.step == acc.groupby("run_id").step.transform("max")].value
        mean, low, high = mean_ci(finals.to_numpy())
        trained = curve[curve.step > 0]
        best = trained.loc[[trained["mean"].idxmax()]] if len(trained) else trained  # the first of ties
        found = plateau(curve, window)
        sep = separations[separations.method == method] if not separations.empty else separations
        belief = beliefs[beliefs.method == method] if not beliefs.empty else beliefs
        rows.append({
            "method": LABELS.get(method, method), "seeds": acc.run_id.nunique(),
            "step 0": f"{curve[curve.step == 0]['mean'].mean():.3f}",
            "best (step)": f"{best['mean'].iloc[0]:.3f} ({int(best.step.iloc[0])})" if len(best) else "-",
            "final": f"{mean:.3f} [{low:.3f}, {high:.3f}]",
            "plateau: step (mean@k)": f"{found[0]} ({found[1]:.3f})" if found else f"none within {int(curve.step.max())}",
            "reward pb": _start_end(sep, "reward/pointbiserial"), "separation d": _start_end(sep, "d"),
            "pooled AUROC": _start_end(sep, "reward/auroc"), "AUROC-within": _start_end(sep, "reward/auroc_within"),
            "trained accuracy": _start_end(sep, "train/accuracy"),
            "over-confidence": _start_end(belief, "overconfidence"),
            **{column: _flagged(belief, detector, span, margin) if method in REWARDED and not belief.empty else "-"
               for column, detector in (("exploited runs", exploited_steps), ("blind runs", blind_steps))},
        })
    return rows


def markdown(rows: list[dict]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


SETTING_LABELS = {"long-toy": "verifier regime (toy)", "long-toy-symmetric": "symmetric regime (toy-symmetric)",
                  "long-toy-4digit": "verifier regime, 4-digit test questions"}


def _save(fig, out: Path, name: str) -> None:
    for suffix in ("png", "pdf"):
        fig.savefig(out / f"{name}.{suffix}", dpi=130, bbox_inches="tight")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Plateaus, exploitation, over-confidence and the metric-or-critic "
                                                 "question from the long-horizon experiments.")
    parser.add_argument("--tracking-uri", required=True, help="the MLflow store of scripts/long_horizon.sh")
    parser.add_argument("--experiments", default=",".join(SETTING_LABELS), help="comma-separated experiment names")
    parser.add_argument("--out", default="docs/long_horizon", help="folder for summary.md and the figures")
    parser.add_argument("--window", type=int, default=50, help="steps without a gain above the CI that make a plateau")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings, sections = {}, ["# Long-horizon summary (written by python -m tempo_bench.analysis.long_horizon)\n"]
    for experiment in [e for e in args.experiments.split(",") if e]:
        try:
            df = load_experiment(experiment, args.tracking_uri)
        except ValueError as exc:
            print(f"  {experiment}: skipped ({exc})")
            continue
        label = SETTING_LABELS.get(experiment, experiment)
        settings[label] = df
        if df.attrs.get("skipped"):
            print(f"  {experiment}: {describe_skipped(df.attrs['skipped'], hint=False)}")
        sections += [f"## {label} (experiment {experiment})\n", markdown(summary_rows(df, args.window)) + "\n"]
        _save(exploitation(df, label), out, f"exploitation_{experiment}")
        _save(metric_or_critic(df, label), out, f"metric_or_critic_{experiment}")
    if not settings:
        raise SystemExit("error: none of the experiments is in the store")
    _save(accuracy_with_plateaus(settings, args.window), out, "plateaus")
    _save(overconfidence(settings), out, "overconfidence")
    (out / "summary.md").write_text("\n".join(sections))
    print("\n".join(sections))
    print(f"wrote {out / 'summary.md'} and the figures beside it")


if __name__ == "__main__":
    main()
