"""What a run records as it goes: wall seconds per phase, and the metrics it returns."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path


class PhaseTimer:
    """Wall seconds per named phase, accumulated over a step; ``current`` names the phase running."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.current: str | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start, self.current = time.perf_counter(), name
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time/{name}": s for name, s in self.seconds.items()}


@dataclass
class RunResult:
    run_id: str | None
    out_dir: Path
    evals: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> eval metrics
    steps: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> train metrics
    # step -> question -> mean@k, for the first and the latest evaluation (the per-question table)
    question_accuracy: dict[int, dict[str, float]] = field(default_factory=dict)
