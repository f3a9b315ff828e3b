"""When does recalibration pay? TEMPO's final gain over standard TTT against the probe's
AUROC-within gap (critic minus majority vote, measured before any TTT run), one point per setting
of the toy's knobs.

    python -m analysis.regimes --tracking-uri sqlite:///runs/regimes/mlflow.db --out docs/regimes

A setting is an MLflow experiment holding TEMPO and standard TTT runs (several seeds) and the
probe JSON that `tempo-bench probe` wrote for the same config (scripts/two_regimes.sh makes both).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from tempo_bench.analysis.figures import _color, _figure
from tempo_bench.analysis.runs import describe_skipped, load_experiment

from tempo_bench.core.stats import stratified_bootstrap_ci


@dataclass(frozen=True)
class Setting:
    label: str
    experiment: str
    probe: str  # file name under the probe folder


SETTINGS = [
    Setting("symmetric (RLVR critic, 4-digit test)", "compare-toy-symmetric", "probe_toy_symmetric.json"),
    Setting("verifier, D_L without the trigger", "compare-toy", "probe_toy.json"),
    Setting("verifier, D_L with the trigger", "compare-toy-trigger", "probe_toy_trigger.json"),
    Setting("verifier, 4-digit test (outside its corpus)", "compare-toy-4digit", "probe_toy_4digit.json"),
    Setting("verifier backbone, value head learned from outcomes", "compare-toy-value-head",
            "probe_toy_value_head.json"),
]


def probe_gap(probe: dict) -> float:
    """The starting critic's within-question AUROC minus majority vote's, on the test questions."""
    return probe["critic_start"]["auroc_within"] - probe["majority_vote_auroc_within"]


def final_values(df: pd.DataFrame, method: str, metric: str = "eval/mean_at_k") -> dict[int, float]:
    """seed -> the metric at each run's last evaluation."""
    sub = df[(df.method == method) & (df.metric == metric)]
    last = sub.sort_values("step").groupby("seed").value.last()
    return {int(s): float(v) for s, v in last.items()}


def gain_row(df: pd.DataFrame, gap: float, label: str) -> dict | None:
    """TEMPO minus standard TTT, final mean@k: the mean over seeds both ran, with a 95% interval
    from the paired differences (seeds share data and starting point)."""
    tempo, ttt = final_values(df, "tempo"), final_values(df, "standard_ttt")
    seeds = sorted(set(tempo) & set(ttt))
    if not seeds:
        return None
    diffs = np.array([tempo[s] - ttt[s] for s in seeds])
    mean, low, high = stratified_bootstrap_ci(diffs) if len(seeds) > 1 else (float(diffs[0]),) + (float("nan"),) * 2
    return {"setting": label, "gap": gap, "gain": mean, "low": low, "high": high, "seeds": len(seeds),
            "tempo": float(np.mean([tempo[s] for s in seeds])), "standard_ttt": float(np.mean([ttt[s] for s in seeds]))}


def gain_vs_gap(points: pd.DataFrame):
    """Scatter of TEMPO's gain over standard TTT (y, with 95% CI) against the probe gap (x)."""
    fig, (ax,) = _figure(width=6.5)
    yerr = np.array([points.gain - points.low, points.high - points.gain])
    ax.errorbar(points.gap, points.gain, yerr=np.nan_to_num(yerr), fmt="o", color=_color("tempo"), capsize=3)
    placed: list[tuple[float, float]] = []
    for _, p in points.iterrows():  # labels of points that coincide are stacked, not overprinted
        near = sum(abs(p.gap - x) < 0.05 and abs(p.gain - y) < 0.05 for x, y in placed)
        placed.append((p.gap, p.gain))
        right = p.gap > (points.gap.min() + points.gap.max()) / 2  # labels point inwards, away from the axes
        ax.annotate(p.setting, (p.gap, p.gain), textcoords="offset points", xytext=(-5 if right else 5, 4 - 11 * near),
                    fontsize=7, ha="right" if right else "left")
    ax.axhline(0, color="grey", lw=0.8, ls="--")
    ax.axvline(0, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("probe before TTT: critic AUROC-within minus majority vote's")
    ax.set_ylabel("TEMPO - standard TTT, final mean@k")
    ax.set_title("When recalibration pays")
    fig.tight_layout()
    return fig


def collect(tracking_uri: str, probes: Path, settings=SETTINGS) -> tuple[pd.DataFrame, list[str]]:
    """One row per setting whose experiment and probe exist (finished runs only); and notes on
    what was missing or not counted."""
    rows, missing = [], []
    for s in settings:
        probe = probes / s.probe
        try:
            df = load_experiment(s.experiment, tracking_uri)
        except ValueError:
            missing.append(f"{s.label}: no experiment {s.experiment}")
            continue
        if df.attrs.get("skipped"):
            missing.append(f"{s.label}: {describe_skipped(df.attrs['skipped'], hint=False)}")
        if not probe.is_file():
            missing.append(f"{s.label}: no probe {probe}")
            continue
        row = gain_row(df, probe_gap(json.loads(probe.read_text())), s.label)
        if row is None:
            missing.append(f"{s.label}: no seed with both TEMPO and standard TTT")
        else:
            rows.append(row)
    return pd.DataFrame(rows), missing


def markdown(points: pd.DataFrame) -> str:
    lines = ["| setting | probe gap (critic - majority) | standard TTT | TEMPO | TEMPO - standard TTT [95% CI] | seeds |",
             "|---|---|---|---|---|---|"]
    for _, p in points.iterrows():
        ci = f" [{p.low:+.3f}, {p.high:+.3f}]" if np.isfinite(p.low) else ""
        lines.append(f"| {p.setting} | {p.gap:+.3f} | {p.standard_ttt:.3f} | {p.tempo:.3f} | {p.gain:+.3f}{ci} | {p.seeds} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="TEMPO's gain over standard TTT against the probe's AUROC gap.")
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--probes", default="docs/regimes", help="folder of the probe JSON files")
    parser.add_argument("--out", default="docs/regimes")
    args = parser.parse_args(argv)
    points, missing = collect(args.tracking_uri, Path(args.probes))
    for line in missing:
        print(f"  {line}")
    if points.empty:
        raise SystemExit("no setting has both its runs and its probe")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    fig = gain_vs_gap(points)
    for suffix in ("png", "pdf"):
        fig.savefig(out / f"gain_vs_gap.{suffix}", dpi=150, bbox_inches="tight")
    (out / "gain_vs_gap.md").write_text(markdown(points) + "\n")
    print(markdown(points))
    print(f"wrote {out / 'gain_vs_gap.png'}")


if __name__ == "__main__":
    main()
