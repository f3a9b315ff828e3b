"""Timing on a shared machine: contenders measured in turns."""

from __future__ import annotations

import statistics
import time

import torch


def in_turns(contenders: dict, reps: int) -> dict[str, float]:
    """Median seconds of each contender, timed in turns after one untimed call of each (A, B, C,
    then B, C, A, ...: the order rotates, so no contender always runs after the same one): a slow
    spell of this shared machine then hits every contender alike, not one contender's block of
    repetitions (measured here: the same rollout 0.55 s in one run and 0.84 s in the next when
    timed in blocks)."""
    for fn in contenders.values():
        fn()
    names = list(contenders)
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for rep in range(reps):
        for name in names[rep % len(names):] + names[: rep % len(names)]:
            fn = contenders[name]
            torch.manual_seed(rep)
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}
