"""Every metric a fixed-seed comparison logs, as JSON: the check that a refactor changed nothing.

    python scripts/metrics_fingerprint.py record before.json [--out DIR] [-- extra compare args]
    python scripts/metrics_fingerprint.py diff before.json after.json [--rtol 1e-6]

``record`` runs ``tempo-bench compare --preset toy-smoke --methods all --seeds 0`` in a fresh
folder (one worker, one thread: deterministic) and stores each run's full metric histories, except
wall times; ``diff`` lists every metric that differs beyond ``rtol`` (NaN equals NaN).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
from pathlib import Path


def record(path: Path, out: Path | None, extra: list[str]) -> None:
    if out is None:  # a throw-away folder, removed once its metrics are read
        with tempfile.TemporaryDirectory(prefix="fingerprint-") as tmp:
            return record(path, Path(tmp), extra)
    cmd = ["tempo-bench", "compare", "--preset", "toy-smoke", "--methods", "all", "--seeds", "0",
           "--workers", "1", "--set", "threads=1", "--set", "train.steps=3", "--out", str(out), *extra]
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("compare-toy-smoke")
    runs = {}
    for run in client.search_runs([experiment.experiment_id]):
        metrics = {}
        for key in sorted(run.data.metrics):
            if key.startswith("time/"):
                continue
            history = client.get_metric_history(run.info.run_id, key)
            metrics[key] = {str(m.step): m.value for m in sorted(history, key=lambda m: m.step)}
        runs[run.info.run_name] = metrics
    path.write_text(json.dumps(runs, indent=1, sort_keys=True))
    print(f"{len(runs)} runs, {sum(len(m) for m in runs.values())} metric series -> {path}")


def diff(before: Path, after: Path, rtol: float) -> int:
    a, b = json.loads(before.read_text()), json.loads(after.read_text())
    problems = [f"run {name}: only in {'before' if name in a else 'after'}" for name in sorted(set(a) ^ set(b))]
    compared = 0
    for name in sorted(set(a) & set(b)):
        for key in sorted(set(a[name]) | set(b[name])):
            if key not in a[name] or key not in b[name]:
                problems.append(f"{name} {key}: only in {'before' if key in a[name] else 'after'}")
                continue
            for step in sorted(set(a[name][key]) | set(b[name][key]), key=int):
                x, y = a[name][key].get(step), b[name][key].get(step)
                compared += 1
                same = x is not None and y is not None and (
                    (math.isnan(x) and math.isnan(y)) or math.isclose(x, y, rel_tol=rtol, abs_tol=rtol))
                if not same:
                    problems.append(f"{name} {key} step {step}: {x} -> {y}")
    print("\n".join(problems) or f"identical: {compared} values in {len(a)} runs (rtol {rtol})")
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="cmd", required=True)
    rec = sub.add_parser("record", help="run the comparison and store its metrics")
    rec.add_argument("path", type=Path)
    rec.add_argument("--out", type=Path, help="run folder (default: a new temporary one)")
    rec.add_argument("extra", nargs="*", help="more compare arguments (after --)")
    dif = sub.add_parser("diff", help="compare two recordings")
    dif.add_argument("before", type=Path)
    dif.add_argument("after", type=Path)
    dif.add_argument("--rtol", type=float, default=1e-6)
    args = parser.parse_args()
    if args.cmd == "record":
        record(args.path, args.out, args.extra)
        return 0
    return diff(args.before, args.after, args.rtol)


if __name__ == "__main__":
    sys.exit(main())
