"""analysis/long_horizon.py on constructed runs: the plateau, exploitation and the metric-or-critic
split each found where they were built in, and nowhere else."""

import matplotlib
import numpy as np
import pandas as pd
import pytest
from tempo_bench.analysis import long_horizon as LH

from tempo_bench.core.metrics import pointbiserial_from_separation

matplotlib.use("Agg")
STEPS = np.arange(0, 201, 10)


def curve(means, half_width=0.02) -> pd.DataFrame:
    means = np.asarray(means, dtype=float)
    return pd.DataFrame({"step": STEPS[: len(means)], "mean": means, "high": means + half_width})


def test_plateau_is_the_first_evaluation_no_later_one_beats_within_the_window():
    rising_then_flat = np.minimum(STEPS / 100, 1.0) * 0.8
    assert LH.plateau(curve(rising_then_flat)) == (100, 0.8)
    # still gaining by more than the CI every 10 steps: no plateau
    assert LH.plateau(curve(STEPS / 250)) is None
    # flat only from step 160: fewer than 50 steps follow, so not yet a plateau
    assert LH.plateau(curve(np.minimum(STEPS / 160, 1.0))) is None
    # a dip does not end a plateau; a later gain above the CI within the window does
    dip = rising_then_flat.copy()
    dip[12] = 0.7
    assert LH.plateau(curve(dip)) == (100, 0.8)
    late_gain = rising_then_flat.copy()
    late_gain[14:] = 0.9  # step 140 onwards
    assert LH.plateau(curve(late_gain)) == (140, 0.9)


def run_of(belief, truth) -> pd.DataFrame:
    return pd.DataFrame({"step": np.arange(1, len(belief) + 1), "belief": belief, "truth": truth})


def test_exploitation_is_belief_up_while_truth_falls_over_the_span():
    steps = np.arange(1, 101)
    belief = np.clip(0.5 + 0.01 * (steps - 30), 0.5, 0.9)  # rises over steps 30-70
    truth = np.clip(0.8 - 0.01 * (steps - 40), 0.4, 0.8)  # falls over steps 40-80
    flagged = LH.exploited_steps(run_of(belief, truth), span=20, margin=0.05)
    # both moved >= 0.05 over the previous 20 steps from step 45 (the truth's fall reaches 0.05) until
    # about step 85 (belief(85) - belief(65) = 0.05, the boundary, lost to rounding)
    assert flagged[0] == 45 and flagged == list(range(45, flagged[-1] + 1)) and flagged[-1] in (84, 85)
    # belief and truth rising together: a good reward, never exploited
    assert LH.exploited_steps(run_of(belief, np.clip(belief - 0.1, 0, 1)), 20, 0.05) == []
    # blind once the truth has fallen 0.10 over 20 steps (step 50, lost to rounding: 51) while the
    # belief did not fall; a flat belief over a falling truth is blind, not exploited
    assert LH.blind_steps(run_of(belief, truth), 20, 0.05)[0] == 51
    flat = run_of(np.full(100, 0.7), truth)
    assert LH.exploited_steps(flat, 20, 0.05) == [] and LH.blind_steps(flat, 20, 0.05)[0] == 51
    # the belief falling with the truth: not blind
    assert LH.blind_steps(run_of(truth - 0.1, truth), 20, 0.05) == []


def tidy(runs: dict[tuple[str, int], dict[str, np.ndarray]]) -> pd.DataFrame:
    rows = []
    for (method, seed), metrics in runs.items():
        for metric, values in metrics.items():
            steps = STEPS if metric == LH.ACCURACY else np.arange(1, len(values) + 1)
            rows += [{"run_id": f"{method}-{seed}", "method": method, "seed": seed, "step": int(s),
                      "metric": metric, "value": float(v), "tokens": 0.0} for s, v in zip(steps, values)]
    return pd.DataFrame(rows)


def constructed_experiment() -> pd.DataFrame:
    """TEMPO: accuracy of the trained answers rising 0.5 -> 0.98, a critic whose separation stays
    d = 2 (its point-biserial shrinks only by the base rate) and whose belief is the truth. Fixed
    critic: separation falling 2 -> 0.5; the truth rising 0.5 -> 0.8 by step 100, then falling
    0.006 a step while the critic's belief keeps rising 0.003 a step."""
    steps = np.arange(1, 201)
    acc = 0.5 + 0.48 * np.minimum(steps / 100, 1.0)
    fixed_truth = np.where(steps < 100, 0.5 + 0.003 * steps, 0.8 - 0.006 * (steps - 100))
    fixed_belief = np.where(steps < 100, fixed_truth, np.minimum(0.8 + 0.003 * (steps - 100), 1.0))
    runs = {}
    for seed in (0, 1):
        for method, pb, truth, belief in (
                ("tempo", pointbiserial_from_separation(2.0, acc), acc, acc),
                ("fixed_critic", pointbiserial_from_separation(np.linspace(2.0, 0.5, steps.size), fixed_truth),
                 fixed_truth, fixed_belief)):
            runs[(method, seed)] = {
                LH.ACCURACY: np.minimum(STEPS / 100, 1.0) * 0.8 + 0.01 * seed,
                "reward/pointbiserial": pb, "train/accuracy": truth, "reward/auroc": np.full(steps.size, 0.9),
                "reward/auroc_within": np.full(steps.size, 0.9), "reward/mean": 2 * belief - 1,
                "reward/gt_mean": truth}
    return tidy(runs)


def test_separation_tells_the_metric_from_the_critic():
    frame = LH.separation_frame(constructed_experiment())
    tempo, fixed = frame[frame.method == "tempo"], frame[frame.method == "fixed_critic"]
    # TEMPO: pb falls (0.71 -> 0.27) but d stays 2 and pb is what the starting separation predicts
    assert tempo["reward/pointbiserial"].iloc[0] > 0.65 and tempo["reward/pointbiserial"].iloc[-1] < 0.3
    assert tempo.d.to_numpy() == pytest.approx(2.0)
    assert tempo.pb_if_unchanged.to_numpy() == pytest.approx(tempo["reward/pointbiserial"].to_numpy())
    # the fixed critic's separation falls to ~0.5 and after the first ten steps (whose median d is the
    # start) its pb stays below the prediction, ending at under 40% of it
    later = fixed[fixed.step > 10]
    assert fixed.d.iloc[-1] < 0.6 and (later["reward/pointbiserial"] < later.pb_if_unchanged).all()
    assert fixed["reward/pointbiserial"].iloc[-1] < 0.4 * fixed.pb_if_unchanged.iloc[-1]


def test_summary_reports_plateau_exploitation_and_separation():
    rows = {r["method"]: r for r in LH.summary_rows(constructed_experiment(), window=50, span=20, margin=0.05)}
    assert rows["TEMPO"]["plateau: step (mean@k)"].startswith("100 (")
    assert rows["TEMPO"]["exploited runs"] == "0/2"
    assert rows["fixed critic"]["exploited runs"].startswith("2/2 (from step ")
    assert rows["fixed critic"]["blind runs"].startswith("2/2 (from step ") and rows["TEMPO"]["blind runs"] == "0/2"
    assert rows["TEMPO"]["separation d"] == "2.00 -> 2.00"
    assert rows["fixed critic"]["separation d"] == "1.97 -> 0.53"  # by hand: 2 - 1.5 (s - 1) / 199 averaged over s = 1-10 and 191-200
    assert rows["TEMPO"]["over-confidence"] == "0.00 -> 0.00"


def test_main_writes_the_summary_and_every_figure(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(LH, "load_experiment", lambda name, uri: constructed_experiment())
    LH.main(["--tracking-uri", "sqlite:///unused.db", "--experiments", "long-toy", "--out", str(tmp_path)])
    names = sorted(p.name for p in tmp_path.iterdir())
    for stem in ("plateaus", "overconfidence", "exploitation_long-toy", "metric_or_critic_long-toy"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
    assert "| TEMPO |" in (tmp_path / "summary.md").read_text()
    assert "verifier regime (toy)" in capsys.readouterr().out


def test_critic_swap_crosses_start_and_final_critics_and_answers(tmp_path, created_store):
    """A fixed critic never changes, so its final critic ranks both answer sets exactly as its
    starting critic does; an online critic's final critic, trained for two steps, does not."""
    from tempo_bench.analysis import critic_swap as CS
    from tempo_bench.commands.cli import main

    created_store(tmp_path)
    assert main(["compare", "--preset", "toy-smoke", "--methods", "fixed_critic,online_critic", "--seeds", "0",
                 "--out", str(tmp_path),
                 "--experiment", "swap", "--set", "train.steps=2", "--set", "eval.size=8", "--set", "threads=1"]) == 0
    table = CS.collect(f"sqlite:///{tmp_path / 'mlflow.db'}", tmp_path, ["swap"], k=4)
    online, table = table[table.method == "online_critic"], table[table.method == "fixed_critic"]
    moved = online.set_index(["critic", "answers"]).d
    assert np.isfinite(moved[("start", "start")]) and moved[("start", "start")] != pytest.approx(moved[("final", "start")])
    assert len(table) == 4 and set(zip(table.critic, table.answers)) == {(c, a) for c in ("start", "final")
                                                                          for a in ("start", "final")}
    cell = table.set_index(["critic", "answers"])
    for answers in ("start", "final"):
        for column in ("auroc_within", "auroc", "d", "accuracy"):
            a, b = cell.loc[("start", answers), column], cell.loc[("final", answers), column]
            assert (np.isnan(a) and np.isnan(b)) or a == pytest.approx(b), (answers, column)
    assert "| swap | fixed_critic | 1 | start | start |" in CS.markdown(table)
