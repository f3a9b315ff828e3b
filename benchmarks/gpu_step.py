"""One TEMPO step and one standard-TTT step of a randomly initialised paper model on one GPU, with
the hf rollout backend, LoRA on policy and critic (the critic sharing the policy's base) and the
in-memory logger: what a GPU machine without vLLM, MLflow or hub access can run
(``scripts/gpu_check.sh``). Prints per method the step time, generated tokens per second and peak
GPU memory beside the memory plan's figure.

The weights are random (built from a shipped config.json, e.g. Qwen3-0.6B's) and the prompts are
the toy's, tokenised by the toy's tokenizer (its ids are valid inputs for any vocabulary; sampled
ids it does not know decode to nothing): the numbers measure compute and memory, not accuracy.
Random weights rarely emit EOS, so every sample runs to max_new_tokens: the worst case.

    python -m tempo_bench.benchmarks.gpu_step --help
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from tempo_bench.core.assets import ASSETS

DEFAULT_CONFIG = ASSETS / "model_configs" / "Qwen--Qwen3-0.6B"


def random_model_folder(config_dir: Path, out: Path, dtype: str) -> Path:
    """A checkpoint folder with random weights of ``config_dir``'s architecture and the toy's
    tokenizer files (nothing is downloaded)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from tempo_bench.policy.model import resolve_model_path

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(config_dir), dtype=getattr(torch, dtype))
    model.save_pretrained(out)
    toy = Path(resolve_model_path("toy"))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
        if (toy / name).is_file():
            shutil.copy(toy / name, out / name)
    return out


def measure(method: str, model_dir: Path, args, out: Path) -> dict:
    """Build a run of ``method``, run ``args.steps`` steps, report the last one."""
    import torch

    from tempo_bench.config import load_config
    from tempo_bench.core.loggers import MemoryLogger
    from tempo_bench.run.memory_plan import plan_memory
    from tempo_bench.run.run import build_run

    config = load_config("toy-smoke", [
        f"method={method}", f"model.path={model_dir}", f"model.device={args.device}", f"model.dtype={args.dtype}",
        "model.gradient_checkpointing=true", "model.attn_implementation=sdpa", "critic.lora=true",
        f"lora.r={args.lora_r}", f"rollout.n={args.n}", f"rollout.max_new_tokens={args.max_new_tokens}",
        f"train.prompts_per_step={args.prompts}", "train.micro_batch_rows=8", "critic.micro_batch_rows=8",
        "critic.warmup_questions=4", "critic.warmup_samples=2", "critic.warmup_epochs=1",
        "critic.estep_questions=4", "critic.estep_samples=2", "critic.probe_questions=2", "critic.probe_samples=2",
        f"out={out}", "grading.workers=0", "log.rollouts_jsonl=false", f"threads={args.threads}",
        f"model.max_prompt_tokens={args.max_prompt_tokens}"])
    cuda = args.device.startswith("cuda")
    plan = plan_memory(config, cuda_gpus=1, card_gb=torch.cuda.get_device_properties(0).total_memory / 2**30) \
        if cuda else None
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    run = build_run(config, MemoryLogger(), out_dir=out / method)
    before = 0  # tokens/rollout counts the whole run: the last step's is the difference
    try:
        for step in range(1, args.steps + 1):
            start = time.perf_counter()
            values = run.step(step)
            wall = time.perf_counter() - start
            generated, before = values["tokens/rollout"] - before, values["tokens/rollout"]
    finally:
        run.close()
    report = {"method": method, "step_s": round(wall, 3), "rollout_s": round(values["time/rollout"], 3),
              "generated_tokens": int(generated), "tokens_per_s": round(generated / values["time/rollout"], 1),
              "phases_s": {k[5:]: round(v, 3) for k, v in values.items() if k.startswith("time/")}}
    if cuda:
        report["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        report["plan_peak_gib"] = round(plan.peak.total, 2)
        report["plan_phases_gib"] = {p.name: round(p.total, 2) for p in plan.phases}
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tempo_bench.benchmarks.gpu_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-config", type=Path, default=DEFAULT_CONFIG,
                        help="folder with the config.json to build random weights from (default: Qwen3-0.6B)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (a check of this script itself)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--prompts", type=int, default=16, help="questions per step (default 16)")
    parser.add_argument("--n", type=int, default=8, help="samples per question (default 8)")
    parser.add_argument("--max-new-tokens", type=int, default=512)
    parser.add_argument("--max-prompt-tokens", type=int, default=64, help="the plan's longest prompt (toy prompts are short)")
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--steps", type=int, default=2, help="steps per method; the last is reported (the first warms up)")
    parser.add_argument("--threads", type=int, default=8)
    parser.add_argument("--methods", default="tempo,standard_ttt")
    parser.add_argument("--json", type=Path, help="also write the reports here")
    args = parser.parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser.error("no CUDA device is visible (use --device cpu to check the script itself)")
        print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}")
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = random_model_folder(args.model_config, Path(tmp) / "model", args.dtype)
        reports = []
        for method in args.methods.split(","):
            report = measure(method, model_dir, args, Path(tmp) / "runs")
            reports.append(report)
            print(json.dumps(report), flush=True)
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
