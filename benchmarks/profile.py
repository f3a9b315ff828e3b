"""Where a toy TEMPO step spends its time: the loop's own phase timers (median over steps) and
the torch profiler's top operators over the same steps."""

from __future__ import annotations

import statistics
import tempfile

from tempo_bench.config import load_config
from tempo_bench.core.loggers import MemoryLogger
from tempo_bench.run.run import run_ttt


def profile_tempo_step(steps: int = 4, threads: int = 2, top: int = 12) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    config = load_config("toy-smoke", ["method=tempo", f"train.steps={steps}", f"eval.every={steps}",
                                       "log.rollouts_jsonl=false", f"threads={threads}"])
    logger = MemoryLogger()
    with tempfile.TemporaryDirectory() as out, profile(activities=[ProfilerActivity.CPU]) as prof:
        run_ttt(config, logger, out_dir=out, progress=False)
    phases = {key[5:]: statistics.median(v for _, v in values) for key, values in logger.metrics.items()
              if key.startswith("time/") and key not in ("time/eval",)}
    step = phases.pop("step")
    ops = [{"op": e.key, "self_cpu_s": e.self_cpu_time_total / 1e6, "calls": e.count}
           for e in sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:top]]
    return {"tempo_step_s": step, "phases_s": dict(sorted(phases.items(), key=lambda kv: -kv[1])), "top_ops": ops,
            "torch_threads": torch.get_num_threads()}


def machine_floors(threads: int = 2) -> dict:
    """What this machine allows a toy step, for reading the ratios: float32 matmul throughput
    (a 1024-square matmul, GFLOP/s) and the cost of one small operator (an add of two [128, 64]
    tensors: the size of a decode step's activations, microseconds per call)."""
    import time

    import torch

    torch.set_num_threads(threads)

    def per_call(fn, calls: int) -> float:
        fn()
        best = float("inf")
        for _ in range(5):
            start = time.perf_counter()
            for _ in range(calls):
                fn()
            best = min(best, (time.perf_counter() - start) / calls)
        return best

    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    x, y = torch.randn(128, 64), torch.randn(128, 64)
    return {"matmul_gflops": 2 * 1024 ** 3 / per_call(lambda: a @ b, 10) / 1e9,
            "small_op_us": per_call(lambda: x + y, 2000) * 1e6}
