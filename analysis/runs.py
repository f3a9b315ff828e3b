"""Logged runs from MLflow (a local store or a server) as tidy pandas DataFrames.

    df = load_experiment("compare-toy", "sqlite:///runs/mlflow.db")   # cached as parquet
    runs = load_run_table("compare-toy", "sqlite:///runs/mlflow.db")  # one row per run: tags, params
    samples = load_rollouts(run_id, "sqlite:///runs/mlflow.db")       # the per-sample eval JSONL
    recompute_at_k(samples, k=4)                                      # pass@k / maj@k from raw samples

``python -m analysis.runs URI --experiment NAME`` prints metric trajectories.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd

from tempo_bench.core import metrics as M
from tempo_bench.core.tracking import tracking_client
from tempo_bench.experiments.results import PARTIAL

COLUMNS = ["run_id", "run_name", "method", "task", "seed", "trial", "step", "tokens", "metric", "value"]
# the compute axis: every token a method spent (rollouts, policy training, critic training and
# the E-steps' own rollouts), cumulative
TOKEN_KEYS = ["tokens/rollout", "tokens/policy", "tokens/critic", "tokens/estep_rollout", "tokens/confidence"]
FINISHED = {"FINISHED", "FAILED", "KILLED"}  # ended: their cached rows stay valid


def _client(tracking_uri: str | None):
    return tracking_client(tracking_uri) if tracking_uri else _default_client()


def _default_client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _unfinished_reason(client, run, by_id: dict) -> str | None:
    """Why a run does not count as a finished result (None: it does). A run counts when MLflow
    says FINISHED, its sweep trial was not pruned, and it ran every planned step (or stopped at
    its token budget)."""
    tags = run.data.tags
    if run.info.status != "FINISHED":
        return f"status {run.info.status}"
    parent = by_id.get(tags.get("mlflow.parentRunId"))
    if "PRUNED" in (tags.get("trial_state"), parent.data.tags.get("trial_state") if parent else None):
        return "pruned by the sweep"
    if tags.get("stop_reason") == "token budget":
        return None
    planned = run.data.params.get("train.steps")
    if planned is None:
        return None
    done = tags.get("steps_done")
    if done is None:  # runs logged before the steps_done tag: read the step history
        done = max((m.step for m in client.get_metric_history(run.info.run_id, "time/step")), default=0)
    if int(done) < int(planned):
        return f"stopped at step {done} of {planned}"
    return None


def select_runs(client, runs: list, include_partial: bool = False) -> tuple[dict[str, str], list[tuple[str, str]]]:
    """Which training runs the analysis counts: ({run_id: method label}, [(run name, why skipped)]).

    Runs that did not finish (still RUNNING, KILLED, FAILED, pruned, or stopped before their last
    step) are skipped, or with ``include_partial`` kept under the label "<method> (partial)".
    Repeats of one experiment (same method, seed, sweep trial and config identity, e.g. a compare
    run twice) count once: the latest finished one."""
    by_id = {r.info.run_id: r for r in runs}
    labels, skipped, seen = {}, [], set()
    for run in sorted(runs, key=lambda r: -(r.info.start_time or 0)):  # newest first
        tags = run.data.tags
        if "method" not in tags:
            continue
        why = _unfinished_reason(client, run, by_id)
        if why is not None and not include_partial:
            skipped.append((run.info.run_name, why))
            continue
        key = (tags["method"], tags.get("seed"), _trial_of(run, by_id), tags.get("config_identity") or run.info.run_id)
        if why is None:
            if key in seen:
                skipped.append((run.info.run_name, "an earlier repeat of the same method, seed and config"))
                continue
            seen.add(key)
        labels[run.info.run_id] = tags["method"] + (PARTIAL if why is not None else "")
    return labels, skipped


def describe_skipped(skipped: list[tuple[str, str]], hint: bool = True) -> str:
    """One line: how many runs were left out and why (``hint``: and the flag that keeps them)."""
    from collections import Counter

    if not skipped:
        return "every training run finished"
    reasons = Counter(why if not why.startswith("stopped at") else "stopped before their last step"
                      for _, why in skipped)
    return (f"skipped {len(skipped)} run(s) that do not count as results: "
            + ", ".join(f"{n} {why}" for why, n in reasons.most_common())
            + (" (--include-partial shows unfinished ones, labelled '(partial)')" if hint else ""))


def _experiment_id(client, experiment: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        names = sorted(e.name for e in client.search_experiments())
        raise ValueError(f"no experiment {experiment!r} at {client.tracking_uri}; there are: {', '.join(names) or 'none'}")
    return found.experiment_id


def _all_runs(client, experiment_id: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], max_results=1000, page_token=token)
        runs += list(page)
        token = page.token
        if not token:
            return runs


def _trial_of(run, by_id: dict) -> int | None:
    """A sweep trial's number: on the trial's run, or on its parent (one run per seed)."""
    for r in (run, by_id.get(run.data.tags.get("mlflow.parentRunId"))):
        if r is not None and "trial_number" in r.data.tags:
            return int(r.data.tags["trial_number"])
    return None


def _run_rows(client, run, trial: int | None) -> pd.DataFrame:
    """The tidy rows of one run (its metric histories, with the cumulative token count per step)."""
    tags = run.data.tags
    rows = [(m.step, key, m.value) for key in run.data.metrics
            for m in client.get_metric_history(run.info.run_id, key)]
    df = pd.DataFrame(rows, columns=["step", "metric", "value"])
    spent = df[df.metric.isin(TOKEN_KEYS)].pivot_table(index="step", columns="metric", values="value", aggfunc="last")
    tokens = spent.sum(axis=1) if not spent.empty else pd.Series(dtype=float)
    df["tokens"] = df.step.map(tokens).fillna(0.0) if not tokens.empty else 0.0
    df["run_id"], df["run_name"] = run.info.run_id, run.info.run_name
    df["method"], df["task"] = tags.get("method"), tags.get("task")
    df["seed"] = int(tags["seed"]) if "seed" in tags else -1
    df["trial"] = trial if trial is not None else -1
    return df[COLUMNS]


def load_experiment(experiment: str, tracking_uri: str | None = None, cache_dir: str | Path | None = None,
                    refresh: bool = False, include_partial: bool = False) -> pd.DataFrame:
    """Every logged value of every counted training run of ``experiment`` in one tidy DataFrame
    (columns COLUMNS; seed and trial are -1 where they do not apply). Sweep parents and trial runs
    that only hold their objective are left out (runs without a ``method`` tag), and so are runs
    that did not finish and earlier repeats (see select_runs); ``df.attrs["skipped"]`` lists them
    as (run name, why).

    With ``cache_dir``, runs that have ended are stored in a parquet file per experiment and read
    from it next time; runs still going (or new) are fetched again."""
    client = _client(tracking_uri)
    runs = _all_runs(client, _experiment_id(client, experiment))
    by_id = {r.info.run_id: r for r in runs}
    labels, skipped = select_runs(client, runs, include_partial)
    runs = [r for r in runs if r.info.run_id in labels]
    cache = cached = None
    if cache_dir is not None:
        key = hashlib.sha256(f"{client.tracking_uri}|{experiment}".encode()).hexdigest()[:12]
        cache = Path(cache_dir) / f"{experiment.replace('/', '_')}-{key}.parquet"
        if cache.is_file() and not refresh:
            cached = pd.read_parquet(cache)
    parts, reused = [], set()
    for run in runs:
        stamp = f"{run.info.status}:{run.info.end_time}"
        if cached is not None and run.info.status in FINISHED:
            hit = cached[(cached.run_id == run.info.run_id) & (cached.stamp == stamp)]
            if not hit.empty:
                parts.append(hit.drop(columns="stamp"))
                reused.add(run.info.run_id)
                continue
        parts.append(_run_rows(client, run, _trial_of(run, by_id)))
    df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=COLUMNS)
    if not df.empty:
        df["method"] = df.run_id.map(labels)
    df = df.sort_values(["method", "seed", "trial", "run_id", "metric", "step"], ignore_index=True)
    if cache is not None:
        stamps = {r.info.run_id: f"{r.info.status}:{r.info.end_time}" for r in runs}
        cache.parent.mkdir(parents=True, exist_ok=True)
        df.assign(stamp=df.run_id.map(stamps)).to_parquet(cache, index=False)
    df.attrs["skipped"] = skipped
    return df


def load_run_table(experiment: str, tracking_uri: str | None = None, include_partial: bool = False) -> pd.DataFrame:
    """One row per counted training run (as load_experiment): run_id, run_name, method, task, seed,
    trial, status, and every logged parameter (``params.<key>``, strings as MLflow stores them)."""
    client = _client(tracking_uri)
    runs = _all_runs(client, _experiment_id(client, experiment))
    by_id = {r.info.run_id: r for r in runs}
    labels, _ = select_runs(client, runs, include_partial)
    rows = []
    for run in runs:
        tags = run.data.tags
        if run.info.run_id not in labels:
            continue
        trial = _trial_of(run, by_id)
        params = dict(run.data.params)
        parent = by_id.get(tags.get("mlflow.parentRunId"))
        if parent is not None:  # a sweep's per-seed run: the trial's parameters are on its parent
            params = {**parent.data.params, **params}
        rows.append({"run_id": run.info.run_id, "run_name": run.info.run_name, "method": labels[run.info.run_id],
                     "task": tags.get("task"), "seed": int(tags.get("seed", -1)),
                     "trial": -1 if trial is None else trial, "status": run.info.status,
                     **{f"params.{k}": v for k, v in params.items()}})
    return pd.DataFrame(rows)


def load_rollouts(run_id: str, tracking_uri: str | None = None, dst: str | Path | None = None) -> pd.DataFrame:
    """The per-sample evaluation rows a run logged (rollouts/eval_step_*.jsonl): run_id, step,
    question_id, sample, greedy, answer, cluster, correct, response."""
    import tempfile

    from mlflow.artifacts import download_artifacts

    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = Path(download_artifacts(run_id=run_id, artifact_path="rollouts", tracking_uri=tracking_uri,
                                            dst_path=str(dst or tmp)))
        except Exception as err:  # noqa: BLE001 (MLflow raises several types for a missing path)
            raise ValueError(f"run {run_id} has no rollouts/ artifacts (log.rollouts_jsonl off?): {err}") from None
        rows = []
        for path in sorted(local.glob("eval_step_*.jsonl")):
            step = int(path.stem.rsplit("_", 1)[1])
            rows += [{"run_id": run_id, "step": step, **json.loads(line)} for line in path.read_text().splitlines() if line]
    return pd.DataFrame(rows)


def load_reliability(run_id: str, tracking_uri: str | None = None) -> dict[int, dict]:
    """E-step -> {"before": bins, "after": bins}: the reliability data a critic run logged at each
    E-step (critic/reliability_step_*.json), without downloading the critic's weights."""
    import tempfile

    from mlflow.artifacts import download_artifacts

    client = _client(tracking_uri)
    files = [f.path for f in client.list_artifacts(run_id, "critic") if "reliability_step_" in f.path]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for path in files:
            local = download_artifacts(run_id=run_id, artifact_path=path, tracking_uri=tracking_uri, dst_path=tmp)
            out[int(Path(path).stem.rsplit("_", 1)[1])] = json.loads(Path(local).read_text())
    return dict(sorted(out.items()))


def recompute_at_k(samples: pd.DataFrame, k: int) -> pd.DataFrame:
    """pass@k (unbiased estimator) and maj@k from raw sampled rows, per run and step, using the
    first k samples of each question for maj@k (as the loop does when it logs eval/maj_at_k)."""
    out = []
    sampled = samples[~samples.greedy]
    for (run_id, step), group in sampled.groupby(["run_id", "step"]):
        by_question = [g.sort_values("sample") for _, g in group.groupby("question_id", sort=False)]
        n = min(len(g) for g in by_question)
        if k > n:
            raise ValueError(f"k={k} but run {run_id} step {step} has only {n} samples per question")
        correct = np.array([g.correct.to_numpy()[:n] for g in by_question])
        clusters = [[None if pd.isna(c) else int(c) for c in g.cluster.to_numpy()[:k]] for g in by_question]
        out.append({"run_id": run_id, "step": step, f"pass_at_{k}": M.pass_at_k(correct, k),
                    f"maj_at_{k}": M.maj_at_k(clusters, correct[:, :k]), "mean": float(correct.mean())})
    return pd.DataFrame(out)


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
    table = trajectory(load_experiment(args.experiment, args.tracking_uri), args.metrics.split(","))
    with pd.option_context("display.max_rows", None, "display.width", 200):
        print(table.round(3).to_string(index=False))


if __name__ == "__main__":
    main()
