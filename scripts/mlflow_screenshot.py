"""Screenshot of the MLflow UI comparing the methods of a `tempo-bench compare` experiment on one
metric: starts `mlflow ui` on loopback, opens the metric page of the chosen runs in headless
Chromium (Debian's `chromium` package), saves a PNG, stops the UI.

    python scripts/mlflow_screenshot.py --tracking-uri sqlite:///runs/mlflow.db \\
        --experiment compare-toy --out docs/mlflow_compare.png
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

CORE = ["standard_ttt", "fixed_critic", "online_critic", "tempo"]
ASSISTANT_PANEL_PX = 460  # MLflow 3's assistant side panel (at 1800 px wide), cropped off


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(url: str, seconds: float) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url, timeout=2).read()
            return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the MLflow UI did not answer at {url} within {seconds:.0f} s")


def chosen_runs(tracking_uri: str, experiment: str, methods: list[str], seed: int) -> tuple[str, list[str]]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise SystemExit(f"error: no experiment {experiment!r} at {tracking_uri}")
    runs = client.search_runs([found.experiment_id], filter_string=f"tags.seed = '{seed}'")
    by_method = {r.data.tags.get("method"): r.info.run_id for r in runs}
    missing = [m for m in methods if m not in by_method]
    if missing:
        raise SystemExit(f"error: experiment {experiment!r} has no seed-{seed} run of {', '.join(missing)}")
    return found.experiment_id, [by_method[m] for m in methods]


def metric_page(port: int, experiment_id: str, run_ids: list[str], metric: str) -> str:
    """The UI's metric page (its getMetricPageRoute query shape), x axis = step."""
    query = {
        "runs": json.dumps(run_ids), "metric": json.dumps(metric), "experiments": json.dumps([experiment_id]),
        "plot_metric_keys": json.dumps([metric]), "plot_layout": "{}", "x_axis": "step",
        "y_axis_scale": "linear", "line_smoothness": "1", "show_point": "true", "deselected_curves": "[]",
        "last_linear_y_axis_range": "[]",
    }
    return f"http://127.0.0.1:{port}/#/metric?" + urllib.parse.urlencode(query, quote_via=urllib.parse.quote)


def screenshot(url: str, out: Path, width: int = 1800, height: int = 1000) -> None:
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        raise SystemExit("error: no chromium on PATH (Debian: apt-get install chromium)")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                        f"--user-data-dir={profile}", f"--window-size={width},{height}",
                        "--virtual-time-budget=30000", f"--screenshot={out}", url],
                       check=True, capture_output=True, timeout=120)
    from PIL import Image

    with Image.open(out) as image:
        image.crop((0, 0, width - ASSISTANT_PANEL_PX, height)).save(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tracking-uri", required=True)
    parser.add_argument("--experiment", required=True)
    parser.add_argument("--metric", default="eval/mean_at_k")
    parser.add_argument("--methods", default=",".join(CORE))
    parser.add_argument("--seed", type=int, default=0, help="whose runs to show (one per method)")
    parser.add_argument("--out", required=True, help="PNG file to write")
    args = parser.parse_args(argv)
    experiment_id, run_ids = chosen_runs(args.tracking_uri, args.experiment, args.methods.split(","), args.seed)
    port = free_port()
    ui = subprocess.Popen([sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", args.tracking_uri,
                           "--host", "127.0.0.1", "--port", str(port)],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        print(f"mlflow ui on 127.0.0.1:{port} ...")
        wait_for(f"http://127.0.0.1:{port}/health", 90)
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        screenshot(metric_page(port, experiment_id, run_ids, args.metric), out)
        print(f"wrote {out}: {len(run_ids)} runs of {args.experiment} on {args.metric}")
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
