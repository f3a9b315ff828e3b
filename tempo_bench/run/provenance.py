"""What identifies a run in MLflow: its name and the code it ran."""

from __future__ import annotations

import subprocess
from pathlib import Path

from tempo_bench.methods.catalog import uses_test_labels


def run_name_of(method: str, seed: int) -> str:
    """MLflow run name: method and seed, and a marker on any method that uses test labels."""
    return f"{method}-s{seed}" + ("-USES-TEST-LABELS" if uses_test_labels(method) else "")


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
