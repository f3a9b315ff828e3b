"""Timing on a shared machine: contenders measured in turns, and what the machine itself allows."""

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


def best_per_call(fn, calls: int, rounds: int = 5) -> float:
    """Seconds per call of ``fn``: the best of ``rounds`` loops of ``calls`` calls (after one warm-up)."""
    fn()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        best = min(best, (time.perf_counter() - start) / calls)
    return best


def machine_floors(threads: int = 2) -> dict:
    """What this machine allows a toy step, for reading the ratios: float32 matmul throughput
    (a 1024-square matmul, GFLOP/s) and the cost of one small operator (an add of two [128, 64]
    tensors: the size of a decode step's activations, microseconds per call)."""
    torch.set_num_threads(threads)
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    x, y = torch.randn(128, 64), torch.randn(128, 64)
    return {"matmul_gflops": 2 * 1024 ** 3 / best_per_call(lambda: a @ b, 10) / 1e9,
            "small_op_us": best_per_call(lambda: x + y, 2000) * 1e6}
