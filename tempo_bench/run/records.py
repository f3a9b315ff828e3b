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
        _wait_for_gpu()  # the previous phase's queued kernels are its time, not this one's
        start, self.current = time.perf_counter(), name
        try:
            yield
        finally:
            _wait_for_gpu()
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time/{name}": s for name, s in self.seconds.items()}


def _wait_for_gpu() -> None:
    """Wait for the CUDA work queued so far (nothing on a CPU run, or before CUDA is used)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


@dataclass
class RunResult:
    run_id: str | None
    out_dir: Path
    evals: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> eval metrics
    steps: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> train metrics
    # step -> question -> mean@k, for the first and the latest evaluation (the per-question table)
    question_accuracy: dict[int, dict[str, float]] = field(default_factory=dict)
