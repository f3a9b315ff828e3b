"""analysis/: the MLflow loader (tidy frame, parquet cache, raw samples), the figure functions
and `tempo-bench figures`, on a small store built here by `tempo-bench compare`."""

import matplotlib
import numpy as np
import pandas as pd
import pytest
from tempo_bench.analysis import figures as F
from tempo_bench.analysis.runs import (
    COLUMNS,
    load_experiment,
    load_reliability,
    load_rollouts,
    load_run_table,
    recompute_at_k,
)

from conftest import copy_store

from tempo_bench.commands.cli import main

matplotlib.use("Agg")
EXPERIMENT = "compare-toy-smoke"


@pytest.fixture(scope="module")
def store(tmp_path_factory, _empty_store):
    """2 methods x 2 seeds, 3 steps each, evaluated every step."""
    out = tmp_path_factory.mktemp("store")
    copy_store(_empty_store, out)
    assert main(["compare", "--preset", "toy-smoke", "--methods", "standard_ttt,tempo", "--seeds", "0,1",
                 "--out", str(out), "--set", "train.steps=3", "--set", "eval.size=8", "--set", "threads=1"]) == 0
    return out, f"sqlite:///{out / 'mlflow.db'}"


@pytest.fixture(scope="module")
def frame(store):
    return load_experiment(EXPERIMENT, store[1])


def test_loader_gives_one_tidy_row_per_logged_value(store, frame):
    from mlflow.tracking import MlflowClient

    assert list(frame.columns) == COLUMNS
    assert sorted(frame.groupby(["method", "seed"]).run_id.nunique().items()) == [
        (("standard_ttt", 0), 1), (("standard_ttt", 1), 1), (("tempo", 0), 1), (("tempo", 1), 1)]
    client = MlflowClient(tracking_uri=store[1])
    run_id = frame.run_id.iloc[0]
    history = client.get_metric_history(run_id, "eval/mean_at_k")
    sub = frame[(frame.run_id == run_id) & (frame.metric == "eval/mean_at_k")]
    assert sub.step.tolist() == [m.step for m in history] == [0, 1, 2, 3]
    assert sub.value.tolist() == [m.value for m in history]
    # tokens: rollout + policy + critic + E-step rollout tokens at that step, cumulative
    tempo = frame[frame.method == "tempo"]
    run = tempo[tempo.run_id == tempo.run_id.iloc[0]]
    at = run[run.step == 2].set_index("metric").value
    expected = sum(at.get(k, 0.0) for k in ("tokens/rollout", "tokens/policy", "tokens/critic", "tokens/estep_rollout"))
    assert (run[run.step == 2].tokens == expected).all() and expected > 0
    assert (run[run.step == 0].tokens == 0).all()
    assert (frame.trial == -1).all()


def test_loader_cache_reuses_finished_runs(store, frame, tmp_path, monkeypatch):
    import tempo_bench.analysis.runs as R

    first = load_experiment(EXPERIMENT, store[1], cache_dir=tmp_path)
    monkeypatch.setattr(R, "_run_rows", lambda *a: pytest.fail("a finished run was fetched again"))
    again = load_experiment(EXPERIMENT, store[1], cache_dir=tmp_path)
    pd.testing.assert_frame_equal(first, again)
    pd.testing.assert_frame_equal(first, frame)


def test_unknown_experiment_names_the_ones_there(store):
    with pytest.raises(ValueError, match=f"no experiment 'nope'.*{EXPERIMENT}"):
        load_experiment("nope", store[1])


def test_pass_and_maj_recomputed_from_raw_samples_equal_the_logged(store, frame):
    runs = load_run_table(EXPERIMENT, store[1])
    assert set(runs.columns) >= {"run_id", "method", "seed", "trial", "params.train.lr"}
    run_id = runs.run_id.iloc[0]
    samples = load_rollouts(run_id, store[1])
    assert set(samples.step) == {0, 1, 2, 3}
    again = recompute_at_k(samples, k=4).set_index("step")
    logged = frame[frame.run_id == run_id].pivot_table(index="step", columns="metric", values="value")
    assert np.allclose(again["pass_at_4"], logged.loc[again.index, "eval/pass_at_k"])
    assert np.allclose(again["maj_at_4"], logged.loc[again.index, "eval/maj_at_k"])
    assert np.allclose(recompute_at_k(samples, k=2)["pass_at_2"], logged.loc[again.index, "eval/pass_at_2"])
    with pytest.raises(ValueError, match="only 4 samples"):
        recompute_at_k(samples, k=5)


def line_labels(ax) -> list[str]:
    return [line.get_label() for line in ax.get_lines() if not line.get_label().startswith("_")]


def test_figures_draw_one_line_per_method(store, frame):
    for make in (F.accuracy_vs_step, F.accuracy_vs_compute):
        fig = make(frame)
        (ax,) = fig.axes
        assert line_labels(ax) == ["standard TTT", "TEMPO"]
        assert ax.get_xlabel() and ax.get_ylabel() and len(ax.collections) == 2  # the CI bands
        colors = [line.get_color() for line in ax.get_lines()]
        assert colors == [F.method_colors()["standard_ttt"], F.method_colors()["tempo"]]
    quality = F.reward_quality(frame)
    assert [line_labels(ax) for ax in quality.axes] == [["standard TTT", "TEMPO"]] * 2
    left, right = F.diversity(frame).axes
    pass_line = left.get_lines()[0]
    assert list(pass_line.get_xdata()) == [1, 2, 3, 4]  # pass@1..pass@4 at the final step
    assert np.all(np.diff(pass_line.get_ydata()) >= -1e-12)  # pass@k grows with k
    assert line_labels(right) == ["standard TTT", "TEMPO"]
    reliability = load_reliability(frame[frame.method == "tempo"].run_id.iloc[0], store[1])
    assert sorted(reliability) == [1, 2, 3]
    fig = F.reliability_diagram(reliability)
    assert len(fig.axes) == 3 and fig.axes[0].get_title() == "E-step at step 1"


def test_recal_sweep_figure_on_a_constructed_sweep():
    """Three K values (one 'never') x 2 seeds: final accuracy and critic cost per K."""
    rows, runs = [], []
    for i, (k, acc, cost) in enumerate([(1, 0.8, 900), (1, 0.7, 1100), (5, 0.6, 300), (5, 0.5, 200),
                                        (None, 0.4, 0), (None, 0.3, 0)]):
        run_id = f"r{i}"
        runs.append({"run_id": run_id, "method": "tempo", "params.methods.tempo.recal_interval": str(k)})
        for metric, value in (("eval/mean_at_k", acc), ("tokens/critic", cost / 2), ("tokens/estep_rollout", cost / 2)):
            rows.append({"run_id": run_id, "method": "tempo", "seed": i % 2, "trial": i // 2, "step": 10,
                         "tokens": 0.0, "metric": metric, "value": value})
    fig = F.recal_sweep(pd.DataFrame(rows), pd.DataFrame(runs))
    left, right = fig.axes
    assert [t.get_text() for t in left.get_xticklabels()] == ["1", "5", "never"]
    means = left.get_lines()[0].get_ydata()
    assert np.allclose(means, [0.75, 0.55, 0.35]) and np.allclose(right.get_lines()[0].get_ydata(), [1000, 250, 0])
    with pytest.raises(ValueError, match="not a recalibration-interval sweep"):
        F.recal_sweep(pd.DataFrame(rows), pd.DataFrame(runs).drop(columns="params.methods.tempo.recal_interval"))


def test_interval_table_on_a_constructed_sweep():
    """Two runs at K=2, one at K=never, 6 training steps each: the table averages the last 5
    steps per run, then the runs of each K; the critic's P(correct) is (V + 1) / 2 of its mean
    reward V, compared with the true accuracy of the same rows."""
    from tempo_bench.analysis.report import interval_table

    rows, runs = [], []
    for i, (k, rewards, truth) in enumerate([(2, [0.0] + [0.6] * 5, 0.7), (2, [0.0] + [0.2] * 5, 0.5),
                                             (None, [0.0] + [-0.2] * 5, 0.5)]):
        run_id = f"r{i}"
        runs.append({"run_id": run_id, "method": "tempo", "params.methods.tempo.recal_interval": str(k)})
        values = [("eval/mean_at_k", 6, 0.8 - 0.1 * i), ("critic/estep_count", 6, 3.0 if k else 0.0),
                  ("tokens/critic", 6, 1000.0 * (k is not None)), ("tokens/estep_rollout", 6, 500.0 * (k is not None))]
        values += [("reward/mean", step + 1, r) for step, r in enumerate(rewards)]
        values += [("reward/gt_mean", step + 1, truth) for step in range(6)]
        rows += [{"run_id": run_id, "method": "tempo", "seed": i, "trial": i, "step": step, "tokens": 0.0,
                  "metric": metric, "value": value} for metric, step, value in values]
    table = interval_table(pd.DataFrame(rows), pd.DataFrame(runs)).splitlines()
    assert table[0].startswith("| K | runs | final mean@k | critic P(correct) - truth |")
    two, never = table[2].split(" | "), table[3].split(" | ")
    # K=2: final 0.8 and 0.7; P(correct) 0.8 - 0.7 and 0.6 - 0.5 -> +0.100 in both runs
    assert two[:4] == ["| 2", "2", "0.750 [0.700, 0.800]", "+0.100 [+0.100, +0.100]"]
    assert two[-2:] == ["3", "1,500 |"]
    # never: one run, 0.4 - 0.5 = -0.100, no interval
    assert never[:4] == ["| never", "1", "0.600", "-0.100"] and never[-2:] == ["0", "0 |"]


def test_figures_command_writes_figures_and_tables_and_names_what_is_missing(store, tmp_path, capsys):
    out = tmp_path / "figs"
    assert main(["figures", "--experiment", EXPERIMENT, "--tracking-uri", store[1], "--out", str(out)]) == 0
    text = capsys.readouterr().out
    for name in ("accuracy_vs_step", "accuracy_vs_compute", "reward_quality", "diversity", "reliability"):
        assert (out / f"{name}.png").stat().st_size > 10_000 and (out / f"{name}.pdf").is_file()
    assert "skipped recal_sweep" in text and "tempo-bench sweep sweeps/recal_interval.yaml" in text
    table = (out / "results.md").read_text()
    assert "| standard_ttt | 2 |" in table and "| tempo | 2 |" in table and "P(TEMPO > method)" in table
    assert "\\begin{tabular}" in (out / "results.tex").read_text()
    flips = (out / "per_question.md").read_text()
    assert "| standard_ttt | 2 |" in flips and "| tempo | 2 |" in flips and "questions gained" in flips
    assert main(["figures", "--experiment", "nope", "--tracking-uri", store[1], "--out", str(out)]) == 2


def test_gain_over_standard_ttt_is_paired_by_seed():
    from tempo_bench.analysis.regimes import gain_row, probe_gap

    rows = []
    for method, finals in (("tempo", {0: 0.5, 1: 0.7}), ("standard_ttt", {0: 0.2, 1: 0.6, 2: 0.9})):
        for seed, final in finals.items():
            rows += [{"method": method, "seed": seed, "metric": "eval/mean_at_k", "step": 0, "value": 0.1},
                     {"method": method, "seed": seed, "metric": "eval/mean_at_k", "step": 40, "value": final}]
    row = gain_row(pd.DataFrame(rows), gap=0.5, label="x")
    assert row["seeds"] == 2  # seed 2 has no TEMPO run: not paired, left out
    assert row["gain"] == pytest.approx(((0.5 - 0.2) + (0.7 - 0.6)) / 2)
    assert row["low"] <= row["gain"] <= row["high"]
    assert probe_gap({"critic_start": {"auroc_within": 0.9}, "majority_vote_auroc_within": 0.2}) == pytest.approx(0.7)


def test_an_eval_tasks_benchmark_gets_its_own_accuracy_figure(frame):
    """eval_<name>/mean_at_k (eval.tasks) is drawn from its own values, with its name in the title."""
    extra = frame[frame.metric == "eval/mean_at_k"].assign(metric="eval_sums/mean_at_k")
    extra = extra.assign(value=1.0 - extra.value)  # values the main metric does not have
    fig = F.accuracy_vs_step(pd.concat([frame, extra]), "eval_sums/mean_at_k", "Accuracy on sums")
    (ax,) = fig.axes
    assert line_labels(ax) == ["standard TTT", "TEMPO"] and fig.texts[0].get_text() == "Accuracy on sums"
    main_fig = F.accuracy_vs_step(frame)
    assert not np.allclose(ax.get_lines()[0].get_ydata(), main_fig.axes[0].get_lines()[0].get_ydata())


def test_question_flip_table_counts_by_hand():
    """Two runs of one method: run a gains q1 (0/2 -> 2/2) and loses q2 (2/2 -> 0/2); run b changes nothing."""
    from tempo_bench.analysis.report import question_flip_table

    def rows(run, step, correct):
        return [{"run_id": run, "step": step, "question_id": q, "sample": j, "greedy": False, "correct": c}
                for q, cs in correct.items() for j, c in enumerate(cs)]

    rollouts = pd.DataFrame(rows("a", 0, {"q1": [0, 0], "q2": [1, 1]}) + rows("a", 4, {"q1": [1, 1], "q2": [0, 0]})
                            + rows("b", 0, {"q1": [1, 1], "q2": [1, 1]}) + rows("b", 4, {"q1": [1, 1], "q2": [1, 1]}))
    table = question_flip_table(rollouts, pd.DataFrame({"run_id": ["a", "b"], "method": ["tempo", "tempo"]}))
    assert "| tempo | 2 | 0.5 | 0.5 |" in table  # one gained and one lost over two runs
    assert "| tempo | q1 | 0.500 | 1.000 | 1 | 0 |" in table and "| tempo | q2 | 1.000 | 0.500 | 0 | 1 |" in table
