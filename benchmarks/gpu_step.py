"""The GPU measurement (``scripts/gpu_check.sh``; issue 26): TEMPO and standard-TTT steps of
randomly initialised paper models with the hf rollout backend, LoRA on policy and critic (the
critic sharing the policy's base) and the in-memory logger, at several shapes, plus the hf decode
loops side by side; what a GPU machine without vLLM, MLflow or hub access can run.

Per shape (``MODEL:PROMPTSxNxTOKENS``) and method: step time and its phases, generated tokens per
second (rollout), trained tokens per second (policy update), peak GPU memory beside the memory
plan's figure. Then the decode loops (``rollout.decode`` eager, static and, on CUDA, graphs) on
the first shape's rollout, with per-question seeds: generated tokens per second and how many rows
drew the eager loop's tokens (all of them on CPU in float32; in bf16 on a GPU, kernels that differ
in the last bits can flip a near-tie token, so a few rows may differ without a bug). Last, issue 26's goals checked on the first shape, as ratios from
this one run. Shapes run in the order given until ``--budget-s`` is spent (the rest are listed as
skipped), so the script ends in time on a slow card.

The weights are random (built from a shipped config.json) and the prompts are the toy's, tokenised
by the toy's tokenizer (its ids are valid inputs for any vocabulary): the numbers measure compute
and memory, not accuracy. Random weights rarely emit EOS, so every sample runs to its full length:
the worst case.

    python -m tempo_bench.benchmarks.gpu_step --help
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import tempfile
import time
from pathlib import Path

from tempo_bench.core.assets import ASSETS

CONFIGS = ASSETS / "model_configs"
GPU_SHAPES = ("Qwen3-0.6B:16x8x512", "Qwen3-1.7B:16x8x512", "Qwen3-0.6B:64x8x512")  # first: the goals' shape
# issue 26's goals on the first shape
GOALS = {"rollout tok/s": 25_000, "trained tok/s": 25_000, "TEMPO / standard step": 1.3, "plan / peak": 1.15}


def parse_shape(text: str) -> tuple[Path, int, int, int]:
    """``MODEL:PROMPTSxNxTOKENS`` -> (config folder, prompts, n, new tokens). MODEL: a shipped
    config's name (``Qwen3-0.6B``, from tempo_bench/assets/model_configs) or a folder."""
    match = re.fullmatch(r"(.+):(\d+)x(\d+)x(\d+)", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected MODEL:PROMPTSxNxTOKENS, e.g. Qwen3-0.6B:16x8x512")
    name, prompts, n, tokens = match.group(1), *map(int, match.groups()[1:])
    shipped = [d for d in CONFIGS.iterdir() if d.is_dir() and d.name.split("--")[-1] == name]
    folder = shipped[0] if shipped else Path(name)
    if not (folder / "config.json").is_file():
        known = sorted(d.name.split("--")[-1] for d in CONFIGS.iterdir() if d.is_dir())
        raise argparse.ArgumentTypeError(f"--shape {text!r}: no config.json for {name!r} (shipped: {', '.join(known)}; "
                                         "or a folder holding one)")
    return folder, prompts, n, tokens


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


def run_config(method: str, model_dir: Path, shape, args, out: Path, decode: str = "eager"):
    from tempo_bench.config import load_config

    _, prompts, n, tokens = shape
    return load_config("toy-smoke", [
        f"method={method}", f"model.path={model_dir}", f"model.device={args.device}", f"model.dtype={args.dtype}",
        "model.gradient_checkpointing=true", "model.attn_implementation=sdpa", "critic.lora=true",
        f"lora.r={args.lora_r}", f"rollout.n={n}", f"rollout.max_new_tokens={tokens}", f"rollout.decode={decode}",
        f"train.prompts_per_step={prompts}", "train.micro_batch_rows=8", "critic.micro_batch_rows=8",
        "critic.warmup_questions=4", "critic.warmup_samples=2", "critic.warmup_epochs=1",
        "critic.estep_questions=4", "critic.estep_samples=2", "critic.probe_questions=2", "critic.probe_samples=2",
        f"out={out}", "grading.workers=0", "log.rollouts_jsonl=false", f"threads={args.threads}",
        f"model.max_prompt_tokens={args.max_prompt_tokens}"])


def measure(method: str, model_dir: Path, shape, args, out: Path) -> dict:
    """Build a run of ``method`` at ``shape``, run ``args.steps`` steps, report the last one."""
    import torch

    from tempo_bench.core.loggers import MemoryLogger
    from tempo_bench.run.memory_plan import plan_memory
    from tempo_bench.run.run import build_run

    config = run_config(method, model_dir, shape, args, out)
    cuda = args.device.startswith("cuda")
    plan = plan_memory(config, cuda_gpus=1, card_gb=torch.cuda.get_device_properties(0).total_memory / 2**30) \
        if cuda else None
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    run = build_run(config, MemoryLogger(), out_dir=out / method)
    before = {"tokens/rollout": 0, "tokens/policy": 0}  # token counters are the run's totals: take differences
    try:
        for step in range(1, args.steps + 1):
            start = time.perf_counter()
            values = run.step(step)
            wall = time.perf_counter() - start
            counted = {key: values[key] - before[key] for key in before}
            before = {key: values[key] for key in before}
    finally:
        run.close()
    report = {"method": method, "step_s": round(wall, 3),
              "generated_tokens": int(counted["tokens/rollout"]), "trained_tokens": int(counted["tokens/policy"]),
              "rollout_tok_s": round(counted["tokens/rollout"] / values["time/rollout"], 1),
              "trained_tok_s": round(counted["tokens/policy"] / values["time/policy"], 1),
              "phases_s": {k[5:]: round(v, 3) for k, v in values.items() if k.startswith("time/")}}
    if cuda:
        report["peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        report["plan_peak_gib"] = round(plan.peak.total, 2)
        report["plan_phases_gib"] = {p.name: round(p.total, 2) for p in plan.phases}
    return report


def compare_decodes(model_dir: Path, shape, args) -> list[dict]:
    """The hf backend's decode loops on one step's rollout of ``shape`` (per-question seeds):
    generated tokens per second of the second of two calls, and whether each drew eager's tokens."""
    import torch

    from tempo_bench.config import LoraConfig, ModelConfig
    from tempo_bench.policy.model import load_policy, load_tokenizer
    from tempo_bench.rollout import SamplingParams, get_backend

    _, prompts, n, tokens = shape
    policy = load_policy(ModelConfig(path=str(model_dir), device=args.device, dtype=args.dtype), LoraConfig(r=args.lora_r))
    tokenizer = load_tokenizer(str(model_dir))
    questions = [f"Q:{137 * i + 11}+{59 * i + 7}\n" for i in range(prompts)]  # toy-style prompts
    sampling = SamplingParams(n=n, temperature=1.0, max_new_tokens=tokens, seeds=tuple(range(prompts)))
    decodes = ["eager", "static"] + (["graphs"] if args.device.startswith("cuda") else [])
    reports, reference = [], None
    for decode in decodes:
        backend = get_backend("hf")(policy, tokenizer, decode=decode)
        backend.generate(questions, sampling)  # warm-up (graphs: capture)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        gen = backend.generate(questions, sampling)
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        reference = reference or gen.token_ids
        same = sum(a == b for a, b in zip(gen.token_ids, reference))
        reports.append({"decode": decode, "seconds": round(seconds, 3), "tok_s": round(gen.num_tokens / seconds, 1),
                        "rows_equal_to_eager": f"{same}/{len(reference)}"})
        print(json.dumps(reports[-1]), flush=True)
        backend.close()
    return reports


def goals(first: list[dict], decodes: list[dict]) -> list[str]:
    """Issue 26's goals on the first shape, each with the measured figure."""
    by_method = {r["method"]: r for r in first}
    tempo, standard = by_method.get("tempo"), by_method.get("standard_ttt")
    best_rollout = max([r["tok_s"] for r in decodes] + [r["rollout_tok_s"] for r in first])
    lines = [f"rollout tok/s (best loop) {best_rollout:,.0f} (goal >= {GOALS['rollout tok/s']:,})",
             f"trained tok/s {max(r['trained_tok_s'] for r in first):,.0f} (goal >= {GOALS['trained tok/s']:,})"]
    if tempo and standard:
        lines.append(f"TEMPO / standard step {tempo['step_s'] / standard['step_s']:.2f} (goal <= {GOALS['TEMPO / standard step']})")
    return lines


def memory_lines(reports: list[dict]) -> list[str]:
    return [f"{r['shape']} {r['method']}: peak {r['peak_gib']} GiB, plan {r['plan_peak_gib']} GiB, plan / peak "
            f"{r['plan_peak_gib'] / r['peak_gib']:.2f} (goal 1.00-{GOALS['plan / peak']})"
            for r in reports if "peak_gib" in r]


def table(reports: list[dict]) -> str:
    head = "| shape | method | step s | rollout tok/s | trained tok/s | peak GiB | plan GiB |\n|---|---|---|---|---|---|---|"
    rows = [f"| {r['shape']} | {r['method']} | {r['step_s']} | {r['rollout_tok_s']:,.0f} | {r['trained_tok_s']:,.0f} | "
            f"{r.get('peak_gib', '-')} | {r.get('plan_peak_gib', '-')} |" for r in reports]
    return "\n".join([head, *rows])


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m tempo_bench.benchmarks.gpu_step", description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", action="append", type=parse_shape, metavar="MODEL:PxNxT",
                   help=f"model config, questions, samples each, new tokens; repeatable (default: "
                        f"{', '.join(GPU_SHAPES)})")
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu (a check of this script itself)")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--max-prompt-tokens", type=int, default=64, help="the plan's longest prompt (toy prompts are short)")
    p.add_argument("--lora-r", type=int, default=64)
    p.add_argument("--steps", type=int, default=2, help="steps per method; the last is reported (the first warms up)")
    p.add_argument("--threads", type=int, default=8)
    p.add_argument("--methods", default="tempo,standard_ttt")
    p.add_argument("--budget-s", type=float, default=420, help="start no new shape after this many seconds (default 420)")
    p.add_argument("--json", type=Path, help="also write every report here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            parser().error("no CUDA device is visible (use --device cpu to check the script itself)")
        print(f"torch {torch.__version__} on {torch.cuda.get_device_name()}", flush=True)
    shapes = args.shape or [parse_shape(s) for s in GPU_SHAPES]
    start, reports, decodes, skipped = time.perf_counter(), [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for index, shape in enumerate(shapes):
            label = f"{shape[0].name.split('--')[-1]}:{shape[1]}x{shape[2]}x{shape[3]}"
            if index and time.perf_counter() - start > args.budget_s:
                skipped.append(label)
                continue
            if shape[0] not in models:
                models[shape[0]] = random_model_folder(shape[0], Path(tmp) / f"model{len(models)}", args.dtype)
            for method in args.methods.split(","):
                reports.append({"shape": label, **measure(method, models[shape[0]], shape, args, Path(tmp) / "runs")})
                print(json.dumps(reports[-1]), flush=True)
            if index == 0:
                decodes = compare_decodes(models[shape[0]], shape, args)
            print("\n" + table(reports), flush=True)  # so far: a run stopped by its timeout still shows these
    first = [r for r in reports if r["shape"] == reports[0]["shape"]]
    print("\n".join(["", "goals, first shape:", *goals(first, decodes), *memory_lines(reports)]
                    + ([f"skipped (--budget-s {args.budget_s:.0f} spent): {', '.join(skipped)}"] if skipped else [])))
    if args.json:
        args.json.write_text(json.dumps({"steps": reports, "decodes": decodes, "skipped": skipped}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
