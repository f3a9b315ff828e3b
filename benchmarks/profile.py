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

