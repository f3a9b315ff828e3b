"""Load logged runs from MLflow into one tidy DataFrame, and print metric trajectories.

    python -m analysis.runs sqlite:///runs/mlflow.db --metrics eval/mean_at_k,reward/pointbiserial
"""

from __future__ import annotations

import argparse

import pandas as pd


def load_metrics(tracking_uri: str, experiment: str = "tempo-bench", run_ids: list[str] | None = None) -> pd.DataFrame:
    """One row per logged value: run_id, run_name, method, task, seed, step, metric, value."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise ValueError(f"no experiment {experiment!r} at {tracking_uri}")
    rows = []
    for run in client.search_runs([found.experiment_id], max_results=10_000):
        if run_ids and run.info.run_id not in run_ids:
            continue
        tags = run.data.tags
        for key in run.data.metrics:
            for m in client.get_metric_history(run.info.run_id, key):
                rows.append({
                    "run_id": run.info.run_id, "run_name": run.info.run_name,
                    "method": tags.get("method"), "task": tags.get("task"),
                    "seed": int(tags.get("seed", -1)), "step": m.step, "metric": key, "value": m.value,
                })
    return pd.DataFrame(rows).sort_values(["run_id", "metric", "step"], ignore_index=True)


def trajectory(df: pd.DataFrame, metrics: list[str]) -> pd.DataFrame:
    """Wide table: one row per (run_name, step), one column per metric."""
    sub = df[df.metric.isin(metrics)]
    return sub.pivot_table(index=["run_name", "step"], columns="metric", values="value").reset_index()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Print metric trajectories of logged runs.")
    parser.add_argument("tracking_uri")
    parser.add_argument("--experiment", default="tempo-bench")
    parser.add_argument("--metrics", default="eval/mean_at_k,eval/maj_at_k,eval/pass_at_k,eval/distinct_answers",
                        help="comma-separated metric keys")
    args = parser.parse_args(argv)
    table = trajectory(load_metrics(args.tracking_uri, args.experiment), args.metrics.split(","))
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
