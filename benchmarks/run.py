"""`tempo-bench bench`: every measurement side by side in one run on this machine, a table on
stdout and the figures as JSON. Goals (issues 8 and 19): a TTT step at least 2.5x faster than
TRL's GRPOTrainer at equal work; rollouts at most 1.3x bare ``generate`` and at most 2x a
teacher-forced forward over the same tokens; a sweep worker at most 0.6x separate processes; the
full toy comparison (every method, one seed) under 2 GB of RSS, and its wall time."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path

from tempo_bench.benchmarks import passes, profile, rollout, system, timing, trl_step

SECTIONS = ("trl", "rollout", "passes", "sweep", "memory", "profile")
GOALS = {  # key: (goal, "higher"/"lower" is better)
    "step_speedup_vs_trl": (2.5, "higher"),
    "rollout_overhead_vs_generate": (1.3, "lower"),
    "rollout_vs_forward_floor": (2.0, "lower"),
    "sweep_time_ratio": (0.6, "lower"),
    "peak_rss_mb": (2048.0, "lower"),
}


def run_bench(sections=SECTIONS, threads: int = 2) -> dict:
    import torch
    from tqdm.auto import tqdm

    jobs = {
        "trl": lambda: trl_step.compare_steps(threads=threads),
        "rollout": lambda: rollout.compare_rollouts(threads=threads),
        "passes": lambda: passes.compare_passes(threads=threads),
        "sweep": system.sweep_sharing,
        "memory": lambda: system.peak_rss(preset="toy", seeds="0"),
        "profile": lambda: profile.profile_tempo_step(threads=threads),
    }
    results: dict = {"machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                                 "torch": torch.__version__, "threads": threads,
                                 **timing.machine_floors(threads)}, "seconds": {}}
    bar = tqdm([s for s in SECTIONS if s in sections], desc="bench", unit="section")
    for name in bar:
        bar.set_postfix_str(name)
        start = time.perf_counter()
        results[name] = jobs[name]()
        results["seconds"][name] = round(time.perf_counter() - start, 1)
        for key in GOALS:
            if key in results[name]:
                results[key] = results[name][key]
    return results


def summary(results: dict) -> str:
    lines = [f"{'measure':34s} {'value':>10s}  {'goal':>8s}  met", "-" * 60]
    machine = results.get("machine", {})
    for key, (goal, better) in GOALS.items():
        if key in results:
            value = results[key]
            met = value >= goal if better == "higher" else value <= goal
            sign = ">=" if better == "higher" else "<="
            lines.append(f"{key:34s} {value:10.3f}  {sign}{goal:<6g}  {'yes' if met else 'NO'}")
    if "matmul_gflops" in machine:
        lines.append(f"  machine: {machine['threads']} threads, float32 matmul {machine['matmul_gflops']:.0f} GFLOP/s, "
                     f"one small operator {machine['small_op_us']:.1f} us")
    if "trl" in results:
        t = results["trl"]
        lines.append(f"  step: ours {t['ours_step_s']:.3f} s, TRL GRPOTrainer {t['trl_step_s']:.3f} s (median)")
    if "rollout" in results:
        r = results["rollout"]
        lines.append(f"  rollout: ours {r['ours_rollout_s']:.3f} s, generate {r['generate_rollout_s']:.3f} s, "
                     f"teacher-forced floor {r['forward_floor_s']:.3f} s ({r['rollout_tokens']} tokens); "
                     f"fused decode step {r['fused_decode_speedup']:.2f}x transformers' own")
    if "passes" in results:
        p = results["passes"]
        lines.append(f"  passes ({p['rows']} rows, {p['tokens']} tokens): policy update {p['policy_update_s']:.3f} s "
                     f"(peft's LoRA forward {p['policy_update_peft_s']:.3f} s, {p['fused_lora_speedup']:.2f}x); "
                     f"forward+backward {p['pass_unmasked_s']:.3f} s without the padding mask, "
                     f"{p['pass_masked_s']:.3f} s with it; critic fit {p['critic_fit_s']:.3f} s, "
                     f"score {p['critic_score_s']:.3f} s")
    if "sweep" in results:
        s = results["sweep"]
        lines.append(f"  sweep: one worker {s['sweep_one_worker_s']:.1f} s, {s['trials']} processes "
                     f"{s['separate_processes_s']:.1f} s")
    if "memory" in results:
        m = results["memory"]
        lines.append(f"  full comparison ({m['rss_run']}): {m['rss_run_s']:.0f} s wall, peak RSS {m['peak_rss_mb']:.0f} MB")
    if "profile" in results:
        p = results["profile"]
        phases = ", ".join(f"{k} {v:.3f}" for k, v in list(p["phases_s"].items())[:6])
        lines.append(f"  TEMPO toy-smoke step {p['tempo_step_s']:.3f} s: {phases}")
        lines += [f"    {o['op']:40s} {o['self_cpu_s']:8.2f} s self, {o['calls']} calls" for o in p["top_ops"][:8]]
    return "\n".join(lines)


def main(out: str | None, sections=SECTIONS, threads: int = 2) -> int:
    results = run_bench(sections, threads)
    print(summary(results))
    if out:
        Path(out).write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {out}")
    return 0
