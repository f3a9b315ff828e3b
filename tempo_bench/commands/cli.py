"""The ``tempo-bench`` command line.

    tempo-bench run --preset toy-smoke [--method M] [--set key=value ...] [--tracking-uri URI] [--out DIR]
    tempo-bench compare --preset toy --methods all --seeds 0,1,2
    tempo-bench sweep sweeps/recal_interval.yaml [--workers 2]
    tempo-bench eval --adapter runs/.../adapter --task toy [--lm-eval]
    tempo-bench figures --experiment compare-toy --out figures/
    tempo-bench toy-model build [--stage S] [--out DIR] [--set key=value ...]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

# OpenMP busy-waiting with every core busy made a training step 20x slower on 2 cores; passive
# waiting costs nothing measurable here. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SUMMARY_KEYS = [
    ("eval/mean_at_k", "mean@k"),
    ("eval/maj_at_k", "maj@k"),
    ("eval/pass_at_k", "pass@k"),
    ("eval/greedy_acc", "greedy"),
    ("eval/distinct_answers", "distinct answers"),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tempo-bench",
        description="Test-time training benchmarks: standard TTT, critic methods and TEMPO.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run one method on one preset, logged to MLflow")
    run.add_argument("--preset", required=True, help="preset name (toy-smoke, toy, ...) or a .yaml path")
    run.add_argument("--method", help="method to run (overrides the preset's)")
    run.add_argument("--seed", type=int, help="run seed (overrides the preset's)")
    run.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                     help="dotted config override, e.g. train.lr=3e-4 (repeatable)")
    run.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, "
                     "else sqlite:///OUT/mlflow.db)")
    run.add_argument("--experiment", help="MLflow experiment name (default: log.experiment)")
    run.add_argument("--out", help="output folder (default: the preset's `out`, usually runs/)")
    run.add_argument("--budget-tokens", type=int, help="stop once rollout + policy + critic tokens "
                     "reach this many (compare methods at equal compute)")
    run.add_argument("--resume", action="store_true", help="continue the latest checkpointed run of "
                     "this method and seed (same MLflow run; needs train.checkpoint_every > 0)")
    run.add_argument("--dry-run", action="store_true", help="validate, print the resolved config and "
                     "what the run would load, and stop (no model, data or network access)")
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    run.set_defaults(func=cmd_run)

    cmp = sub.add_parser("compare", help="several methods x seeds into one MLflow experiment, "
                         "with a results table (95%% bootstrap CIs over seeds)")
    cmp.add_argument("--preset", required=True)
    cmp.add_argument("--methods", help="comma-separated methods, or 'all' (every registered method); default: "
                     "the registered default comparison, " + ",".join(default_methods()))
    cmp.add_argument("--seeds", default="0,1,2", help="comma-separated seeds (default 0,1,2)")
    cmp.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    cmp.add_argument("--tracking-uri")
    cmp.add_argument("--experiment", help="MLflow experiment (default: compare-<preset>)")
    cmp.add_argument("--out", help="output folder (default: the preset's `out`)")
    cmp.add_argument("--budget-tokens", type=int, help="equal compute: token budget per run")
    cmp.add_argument("--table", help="also write the results table (markdown) to this file")
    cmp.add_argument("--workers", default="auto",
                     help="runs at a time, each in its own process with CPUs / workers torch threads (default "
                     "auto: one per CPU core for a model on the CPU, where small runs side by side beat one "
                     "run on all cores; 1 on a GPU)")
    cmp.add_argument("--figures", metavar="DIR", help="also write the experiment's figures and tables "
                     "(tempo-bench figures) to DIR")
    cmp.add_argument("--resume", action="store_true", help="after an interruption: reuse the experiment's "
                     "finished runs of the same config, continue unfinished ones from their last checkpoint, "
                     "run the rest")
    cmp.set_defaults(func=cmd_compare)

    sw = sub.add_parser("sweep", help="an Optuna sweep (e.g. over TEMPO's recalibration interval)")
    sw.add_argument("spec", help="sweep spec YAML (see sweeps/)")
    sw.add_argument("--study", help="study name (default: the spec's `study`)")
    sw.add_argument("--storage", help="Optuna RDB URL (sqlite:///..., postgresql://...); default: a "
                    "JournalStorage file in OUT/sweeps/STUDY/")
    sw.add_argument("--n-trials", type=int, help="finished trials the study should reach (default: the spec's)")
    sw.add_argument("--workers", type=int, default=1, help="worker processes on this machine (default 1)")
    sw.add_argument("--tracking-uri", help="MLflow tracking URI (default: sqlite under OUT)")
    sw.add_argument("--out", default="runs", help="output folder (default: runs)")
    sw.add_argument("--quiet", action="store_true", help="no progress bars")
    sw.set_defaults(func=cmd_sweep)

    ev = sub.add_parser("eval", help="evaluate a saved policy adapter on a task (and with lm-eval)")
    ev.add_argument("--adapter", required=True, help="peft adapter folder (a run's .../adapter)")
    ev.add_argument("--task", required=True, help="toy, or a benchmark: aime24, aime25, amc, math500, gsm8k, gpqa")
    ev.add_argument("--data", help="local JSON / JSONL / parquet file of the task (default: the hub)")
    ev.add_argument("--model", help="base model (default: the adapter's base_model_name_or_path)")
    ev.add_argument("--limit", type=int, help="first N questions only")
    ev.add_argument("--k", type=int, default=8, help="samples per question for mean@k / maj@k / pass@k (default 8)")
    ev.add_argument("--max-new-tokens", type=int, default=96)
    ev.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ev.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ev.add_argument("--no-chat-template", action="store_true", help="feed prompts raw even if the "
                    "tokenizer has a chat template")
    ev.add_argument("--lm-eval", action="store_true", help="also evaluate the adapter with "
                    "lm-evaluation-harness on the same questions (greedy) and compare")
    ev.add_argument("--seed", type=int, default=0)
    ev.set_defaults(func=cmd_eval)

    fg = sub.add_parser("figures", help="the paper's figures (PNG + PDF) and results tables from an "
                        "MLflow experiment")
    fg.add_argument("--experiment", required=True, help="MLflow experiment (e.g. compare-toy, or a sweep's)")
    fg.add_argument("--tracking-uri", help="MLflow tracking URI (default: $MLFLOW_TRACKING_URI, else "
                    "sqlite:///runs/mlflow.db)")
    fg.add_argument("--out", required=True, help="folder for the figures and tables")
    fg.add_argument("--refresh", action="store_true", help="ignore the parquet cache of finished runs")
    fg.add_argument("--include-partial", action="store_true", help="also plot runs that did not finish "
                    "(killed, failed, pruned, still running), labelled '<method> (partial)'; by default "
                    "only finished runs count, and the command says how many it skipped and why")
    fg.set_defaults(func=cmd_figures)

    pr = sub.add_parser("probe", help="before TTT: can the critic rank test answers better than majority "
                        "vote? (within-question AUROC, before and after recalibration)")
    pr.add_argument("--preset", required=True)
    pr.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    pr.add_argument("--k", type=int, default=8, help="samples per test question (default 8)")
    pr.add_argument("--estep-rounds", type=int, default=4, help="E-steps before the second measurement")
    pr.add_argument("--out", help="write the results as JSON to this file")
    pr.set_defaults(func=cmd_probe)

    bn = sub.add_parser("bench", help="speed and memory side by side: a step against TRL, rollouts against "
                        "generate, sweep sharing, peak RSS, a step profile (about 10 minutes on 2 cores)")
    bn.add_argument("--out", help="write the results as JSON to this file")
    bn.add_argument("--only", help="comma-separated sections: trl, rollout, sweep, memory, profile")
    bn.add_argument("--threads", type=int, default=2, help="torch threads in the measured runs (default 2)")
    bn.set_defaults(func=cmd_bench)

    toy = sub.add_parser("toy-model", help="the embedded tiny model")
    toy_sub = toy.add_subparsers(dest="toy_command", required=True)
    build = toy_sub.add_parser(
        "build", help="build the toy starting point deterministically on one core: pretrain the policy (about 4 "
        "minutes) and the critic's backbone (about 13), RLVR with PPO and the critic on the labeled pool, "
        "then measure the result (tempo-bench probe)")
    build.add_argument("--stage", choices=["all", "pretrain", "critic-pretrain", "verifier-pretrain", "rlvr"],
                       default="all",
                       help="pretrain: the policy's base; critic-pretrain: the critic's larger backbone on the "
                       "policy's corpus (the symmetric regime); verifier-pretrain: a verifier backbone on the "
                       "verification corpus (the verifier regime, about 8 minutes); rlvr: the RLVR stage "
                       "(all of them by default)")
    build.add_argument("--out", help="folder for toy_model/, toy_critic_base/ and toy_rlvr/ (default: the "
                       "package's assets, what the presets load)")
    build.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                       help="override a ToyModelSpec field (e.g. steps=200), prefixed rlvr. an RLVRSpec field "
                       "(e.g. rlvr.steps=50), prefixed verifier. a VerifierSpec field (e.g. "
                       "verifier.error_kinds=[chain,slip])")
    build.add_argument("--quiet", action="store_true")
    build.set_defaults(func=cmd_toy_build)
    return parser


from tempo_bench.core.errors import ConfigError  # noqa: E402  (after the environment is set)
from tempo_bench.core.errors import Interrupted, UserError  # noqa: E402
from tempo_bench.core.loggers import SPOOL  # noqa: E402  (a run folder's file of buffered MLflow writes)
from tempo_bench.core.tracking import check_tracking, ensure_writable  # noqa: E402
from tempo_bench.core.processes import deliver_swallowed_interrupts, quiet_libraries  # noqa: E402
from tempo_bench.methods.catalog import default_methods  # noqa: E402


def cmd_run(args) -> int:
    from tempo_bench.config import load_config

    overrides = list(args.overrides)
    for flag, key in ((args.method, "method"), (args.seed, "seed"), (args.out, "out"),
                      (args.tracking_uri, "log.tracking_uri"), (args.experiment, "log.experiment"),
                      (args.budget_tokens, "train.budget_tokens")):
        if flag is not None:
            overrides.append(f"{key}={flag}")
    config = load_config(args.preset, overrides)
    if args.dry_run:
        print(describe_run(config))
        return 0
    from tempo_bench.run.inputs import check_inputs

    check_inputs(config)
    ensure_writable(config.out)

    from tempo_bench.core.loggers import MLflowLogger, default_tracking_uri
    from tempo_bench.run.run import run_name_of, run_ttt
    from tempo_bench.methods.catalog import method_class

    out = Path(config.out)
    uri = config.log.tracking_uri or default_tracking_uri(out)
    run_name = run_name_of(config.method, config.seed)
    print(f"tempo-bench run: preset={config.preset} method={config.method} seed={config.seed}")
    if method_class(config.method).uses_test_labels:
        print(f"  NOTE: {config.method} trains on the TEST labels: an upper bound, not a TTT method")
    print(f"  MLflow: {uri}  experiment={config.log.experiment}")
    check_tracking(uri)
    if args.resume:
        from tempo_bench.run.checkpoint import check_resumable, find_resumable, latest_checkpoint

        run_dir = find_resumable(out, config.log.experiment, run_name)
        if run_dir is None:
            raise ConfigError(f"nothing to resume: no checkpointed run {run_name!r} under "
                              f"{out / config.log.experiment}")
        run_id = check_resumable(latest_checkpoint(run_dir), config)["run_id"]
        logger = MLflowLogger(uri, config.log.experiment, run_name, run_id=run_id,
                              spool_path=run_dir / SPOOL)
    else:
        logger = MLflowLogger(uri, config.log.experiment, run_name, artifact_root=out / "mlartifacts")
        run_dir = out / config.log.experiment / f"{run_name}-{logger.run_id[:8]}"
        logger.spool_path = run_dir / SPOOL
    try:
        with logger:
            result = run_ttt(config, logger, out_dir=run_dir, progress=not args.quiet, resume=args.resume)
    except KeyboardInterrupt:
        raise Interrupted(_resume_hint(args.argv, run_dir, config)) from None
    _print_summary(result, uri)
    return 0


def command_line(argv: list[str], resume: bool = False) -> str:
    """The command a user typed, to print after an interruption; with ``resume``, with
    ``--resume`` added (once)."""
    import shlex

    return shlex.join(["tempo-bench", *argv, *(["--resume"] if resume and "--resume" not in argv else [])])


def _resume_hint(argv: list[str], run_dir: Path, config) -> str:
    """What an interrupted run left behind, and the command that continues it."""
    from tempo_bench.run.checkpoint import latest_checkpoint, load_state

    checkpoint = latest_checkpoint(run_dir)
    if checkpoint is None:
        return (f"MLflow run marked KILLED; no checkpoint was written yet (train.checkpoint_every="
                f"{config.train.checkpoint_every}). Start again: {command_line(argv)}")
    return (f"MLflow run marked KILLED; checkpoint of step {load_state(checkpoint)['step']} kept in "
            f"{checkpoint.parent}. Continue it: {command_line(argv, resume=True)}")


def describe_run(config) -> str:
    """The resolved config and what a run of it would load, without loading anything (no model,
    data or network access: a local cache or file is looked up on disk only)."""
    import os

    import yaml

    from tempo_bench.methods.catalog import method_class

    cls = method_class(config.method)
    uri = config.log.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(config.out) / 'mlflow.db'}"
    model = _describe_model(config.model.path)
    rollout = config.rollout
    backend = rollout.backend
    if backend == "vllm":
        v = rollout.vllm
        backend += (f" (weights synced as {v.sync}, tensor parallel {v.tensor_parallel_size}, "
                    f"{v.gpu_memory_utilization:.0%} of GPU memory, sleep {'on' if v.sleep else 'off'})")
    lines = [
        "# resolved config", yaml.safe_dump(config.model_dump(), sort_keys=False).rstrip(), "",
        "# would load",
        f"policy:   {model}, {config.model.dtype} on {_describe_device(config.model.device)}, LoRA r={config.lora.r}"
        + (", gradient checkpointing" if config.model.gradient_checkpointing else ""),
        f"critic:   {'a value head on ' + (_describe_model(config.critic.path) if config.critic.path else 'the policy model') + (' (LoRA)' if config.critic.lora else '') if cls.uses_critic else 'none'}",
        f"task:     {_describe_task(config.task)}",
        f"rollouts: {backend}, {rollout.n} samples per question, up to {rollout.max_new_tokens} new tokens, "
        f"{config.train.prompts_per_step} questions per step, {config.train.steps} steps",
        f"method:   {config.method}{' (USES TEST LABELS)' if cls.uses_test_labels else ''} "
        f"{config.method_options().model_dump()}",
        f"grading:  {'in the training process' if not config.grading.workers else f'{config.grading.workers} worker processes'}",
        f"logging:  {uri}, experiment {config.log.experiment}",
    ]
    return "\n".join(lines)


def _describe_model(path: str) -> str:
    if path == "toy":
        return "the shipped toy model (tempo_bench/assets/toy_model)"
    if Path(path).expanduser().is_dir():
        return f"{path} (local folder)"
    try:
        from huggingface_hub import try_to_load_from_cache

        cached = isinstance(try_to_load_from_cache(path, "config.json"), str)
    except Exception:  # not a valid repo id: the run will say so when it loads
        cached = False
    return f"{path} (hub id; {'in the local cache' if cached else 'not cached here: downloaded at start'})"


def _describe_device(device: str) -> str:
    import torch

    gpus = torch.cuda.device_count()
    if device == "cpu" or (device == "auto" and not gpus):
        return "cpu"
    here = f"{gpus} GPU(s) visible" if gpus else "no GPU visible here: the run needs one"
    return f"{device} ({here})"


def _describe_task(task) -> str:
    if task.name == "toy_addition":
        return f"toy_addition: {task.test_size} unlabeled test questions, {task.labeled_size} labeled"
    from tempo_bench.tasks.real import TASK_SPECS

    def source(name, path):
        spec = TASK_SPECS[name]
        if path:
            return f"{path} ({'found' if Path(path).is_file() else 'MISSING'})"
        return f"hub {spec.hub_id}{':' + spec.hub_config if spec.hub_config else ''} split {spec.split}"

    test = f"{task.name} ({TASK_SPECS[task.name].description}) from {source(task.name, task.source)}"
    if task.limit:
        test += f", first {task.limit}"
    labeled = (f"; labeled D_L: {task.labeled_size} questions drawn from {task.labeled} "
               f"({source(task.labeled, task.labeled_source)})") if task.labeled_size else "; no labeled pool"
    return test + labeled




def _print_summary(result, uri: str) -> None:
    first, last = min(result.evals), max(result.evals)
    print(f"\nEvaluation on the test questions (step {first} -> step {last}):")
    for key, label in SUMMARY_KEYS:
        if key in result.evals[first]:
            a, b = result.evals[first][key], result.evals[last][key]
            print(f"  {label:<17} {a:6.3f} -> {b:6.3f}  ({b - a:+.3f})")
    steps = sorted(result.steps)
    if steps:
        s0, s1 = result.steps[steps[0]], result.steps[steps[-1]]
        if "reward/pointbiserial" in s1:
            print(f"Reward quality (point-biserial), step {steps[0]} -> {steps[-1]}: "
                  f"{s0['reward/pointbiserial']:.3f} -> {s1['reward/pointbiserial']:.3f}")
        mean_step = sum(result.steps[s]["time/step"] for s in steps) / len(steps)
        print(f"Mean step time {mean_step:.2f} s (without evaluation); tokens generated for "
              f"training: {s1['tokens/rollout']:,}")
    print(f"\nRun {result.run_id}; adapter in {result.out_dir / 'adapter'}")
    if uri.startswith("sqlite:///"):
        print(f"Browse it: mlflow ui --backend-store-uri {uri}")


def _compare_workers(text: str, preset: str, overrides: list[str], runs: int) -> int:
    if text != "auto":
        try:
            workers = int(text)
        except ValueError:
            workers = 0
        if workers < 1:
            raise ConfigError(f"--workers takes 'auto' or a whole number >= 1, got {text!r}")
        return workers
    from tempo_bench.config import load_config
    from tempo_bench.policy.model import resolve_device

    if resolve_device(load_config(preset, overrides).model.device) != "cpu":
        return 1
    return max(1, min(os.cpu_count() or 1, runs))


def cmd_compare(args) -> int:
    from tempo_bench.experiments.compare import parse_methods, parse_seeds, results_table, run_compare
    from tempo_bench.config import load_config

    try:
        methods = parse_methods(args.methods) if args.methods else default_methods()
        seeds = parse_seeds(args.seeds)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    overrides = list(args.overrides) + (
        [f"train.budget_tokens={args.budget_tokens}"] if args.budget_tokens else [])
    workers = _compare_workers(args.workers, args.preset, overrides, len(methods) * len(seeds))
    outcomes, uri = run_compare(args.preset, methods, seeds, overrides, args.tracking_uri, args.out,
                                args.experiment, workers, resume=args.resume,
                                command=command_line(args.argv, resume=True))
    table = results_table(outcomes)
    print("\nFinal metrics, mean [95% bootstrap CI] over seeds (pb = reward point-biserial, "
          "mean of the first / last 5 steps; critic gap = test - probe ECE at the end):\n")
    print(table)
    if args.table:
        Path(args.table).write_text(table + "\n")
    failed = [o for o in outcomes if o.error]
    for o in failed:
        print(f"FAILED {o.method} seed {o.seed}: {o.error}", file=sys.stderr)
    if args.figures:
        from tempo_bench.analysis.report import write_report

        experiment = args.experiment or f"compare-{load_config(args.preset, overrides).preset}"
        print(f"\nFigures of experiment {experiment}:")
        write_report(experiment, uri, ensure_writable(args.figures))
        print(f"Accuracy against step: {Path(args.figures) / 'accuracy_vs_step.png'}")
    if uri.startswith("sqlite:///"):
        print(f"\nCompare the runs: mlflow ui --backend-store-uri {uri}")
    return 1 if failed else 0


def cmd_sweep(args) -> int:
    from tempo_bench.experiments.sweep import describe, run_sweep

    if args.workers < 1:
        raise ConfigError(f"--workers must be >= 1, got {args.workers}")
    study, left = run_sweep(args.spec, args.study, args.storage, args.n_trials, args.workers,
                            args.tracking_uri, args.out, progress=not args.quiet,
                            command=command_line(args.argv))
    print(describe(study))
    if left:
        print("the sweep is incomplete:\n  " + "\n  ".join(left) + "\nrun the same command again to "
              "finish it (completed trials are kept)", file=sys.stderr)
        return 1
    return 0


def cmd_eval(args) -> int:
    import tempfile

    from tempo_bench.experiments import adapter_eval as E
    from tempo_bench.config import ModelConfig
    from tempo_bench.policy.model import load_tokenizer, prompt_renderer, resolve_device

    adapter = Path(args.adapter)
    try:
        base = args.model or E.adapter_base(adapter)
        eval_set = E.load_eval_set(args.task, args.data, args.limit)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    device = resolve_device(args.device)
    tokenizer = load_tokenizer(base)
    render = prompt_renderer(tokenizer, ModelConfig(path=base, chat_template=not args.no_chat_template))
    print(f"tempo-bench eval: {adapter} on {base}, task {args.task} ({len(eval_set.questions)} questions), {device}")
    policy = E.load_adapter_policy(adapter, base, args.dtype, device)
    values, ours = E.our_eval(policy, tokenizer, eval_set, render, args.k, args.max_new_tokens, args.seed)
    k = args.k
    print(f"  ours:    greedy accuracy {values['eval/greedy_acc']:.4f} | mean@{k} {values['eval/mean_at_k']:.4f} "
          f"| maj@{k} {values['eval/maj_at_k']:.4f} | pass@{k} {values['eval/pass_at_k']:.4f}")
    if not args.lm_eval:
        return 0
    del policy
    with tempfile.TemporaryDirectory(prefix="tempo-bench-lmeval-") as folder:
        acc, theirs = E.lm_eval_eval(adapter, base, eval_set, Path(folder), args.max_new_tokens, args.dtype,
                                     device, chat_template=render is not None)
    same = sum(a.strip() == b.strip() for a, b in zip(ours, theirs))
    print(f"  lm-eval: greedy accuracy {acc:.4f}")
    print(f"  agreement: accuracy difference {acc - values['eval/greedy_acc']:+.4f}; identical greedy "
          f"responses on {same}/{len(ours)} questions")
    return 0


def cmd_figures(args) -> int:
    from tempo_bench.analysis.report import write_report

    uri = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri is None:
        store = Path("runs") / "mlflow.db"
        if not store.is_file():
            raise ConfigError(f"no MLflow store at {store}; pass --tracking-uri (e.g. sqlite:///OUT/mlflow.db "
                              "of the run's --out folder)")
        uri = f"sqlite:///{store.resolve()}"
    check_tracking(uri)
    ensure_writable(args.out)
    print(f"tempo-bench figures: experiment {args.experiment} at {uri} -> {args.out}")
    try:
        written = write_report(args.experiment, uri, Path(args.out), refresh=args.refresh,
                               include_partial=args.include_partial)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    print(f"{len(written)} files in {args.out}")
    return 0


def cmd_probe(args) -> int:
    from tempo_bench.config import load_config
    from tempo_bench.run.inputs import check_inputs
    from tempo_bench.experiments.probe import main as probe_main

    config = load_config(args.preset, list(args.overrides))
    if config.task.labeled_size <= config.critic.probe_questions:
        raise ConfigError("the probe needs a labeled pool larger than critic.probe_questions")
    check_inputs(config)
    if args.out:
        ensure_writable(Path(args.out).parent or Path("."))
    return probe_main(config, args.k, args.estep_rounds, args.out)


def cmd_bench(args) -> int:
    try:
        from tempo_bench.benchmarks.run import SECTIONS, main as bench_main
    except ImportError as err:
        raise ConfigError(f"the benchmarks need the bench extra: pip install -e '.[bench]' ({err})") from None
    sections = args.only.split(",") if args.only else SECTIONS
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        raise ConfigError(f"unknown bench sections {unknown}; choose from {', '.join(SECTIONS)}")
    if "trl" in sections:
        import importlib.util

        if importlib.util.find_spec("trl") is None:
            raise ConfigError("the TRL comparison needs TRL: pip install -e '.[bench]' (or --only without trl)")
    return bench_main(args.out, sections, args.threads)


_SPEC_PREFIXES = ("rlvr.", "verifier.")


def _spec_overrides(overrides: list[str], prefix: str, cls) -> dict:
    """The --set assignments of one build spec: ``prefix`` 'rlvr.', 'verifier.' or '' (the
    policy's ToyModelSpec: keys without a known prefix)."""
    import yaml

    fields = {}
    for assignment in overrides:
        key, _, raw = assignment.partition("=")
        owner = next((p for p in _SPEC_PREFIXES if key.startswith(p)), "")
        if owner != prefix:
            continue
        name = key[len(prefix):]
        if name not in cls.__dataclass_fields__:
            raise ConfigError(f"unknown {cls.__name__} field {name!r} (--set {prefix}{name}); allowed: "
                              f"{', '.join(cls.__dataclass_fields__)}")
        fields[name] = _typed(cls, name, yaml.safe_load(raw))
    return fields


def _spec(cls, overrides: list[str], prefix: str):
    try:
        return cls(**_spec_overrides(overrides, prefix, cls))
    except ValueError as err:  # the spec's own validation (VerifierSpec names field and allowed values)
        raise ConfigError(str(err)) from None


def _typed(cls, name: str, value):
    """A --set value as the field's type (YAML reads 2e-3 as a string): a clear error otherwise."""
    default = cls.__dataclass_fields__[name].default
    if isinstance(default, bool) or default is None or isinstance(default, str):
        return value
    if isinstance(default, (int, float)):
        try:
            number = float(value) if isinstance(default, float) else int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{cls.__name__}.{name} takes a number, got {value!r}") from None
        return number
    if isinstance(default, tuple):
        if not isinstance(value, list):
            raise ConfigError(f"{cls.__name__}.{name} takes a list like [1,2,3], got {value!r}")
        return tuple(value)
    return value


def cmd_toy_build(args) -> int:
    from tempo_bench.toy.build import build_and_score, build_rlvr, build_verifier
    from tempo_bench.toy.model import (CRITIC_BASE_DIR, RLVR_DIR, SHIPPED_DIR, VERIFIER_DIR, ToyModelSpec,
                                       critic_backbone_spec)
    from tempo_bench.toy.rlvr import RLVRSpec
    from tempo_bench.toy.verifier import VerifierSpec

    spec = _spec(ToyModelSpec, args.overrides, "")
    rlvr_spec = _spec(RLVRSpec, args.overrides, "rlvr.")
    verifier_spec = _spec(VerifierSpec, args.overrides, "verifier.")
    root = ensure_writable(args.out) if args.out else None
    base = root / "toy_model" if root else SHIPPED_DIR
    critic_base = root / "toy_critic_base" if root else CRITIC_BASE_DIR
    pretrain = [("pretrain", base, spec), ("critic-pretrain", critic_base, critic_backbone_spec())]
    for stage, out, stage_spec in pretrain:
        if args.stage in ("all", stage):
            manifest = build_and_score(out, stage_spec, show_progress=not args.quiet)
            print(f"wrote {out} ({manifest['num_parameters']:,} parameters, weights {manifest['weights_hash']})")
            for name, value in manifest["scores"].items():
                print(f"  {name:<24} {value}")
    if args.stage in ("all", "verifier-pretrain"):
        out = root / "toy_verifier" if root else VERIFIER_DIR
        manifest = build_verifier(out, verifier_spec, show_progress=not args.quiet)
        print(f"wrote {out} ({manifest['num_parameters']:,} parameters, weights {manifest['weights_hash']}); "
              f"covers {manifest['covers']}")
        for name, value in manifest["scores"].items():
            print(f"  {name:<24} {value}")
        from tempo_bench.experiments.probe import report

        print(f"probe of the {manifest['probe_preset']} preset with this verifier as its critic:")
        print(report(manifest["probe"]))
    if args.stage in ("all", "rlvr"):
        from tempo_bench.experiments.probe import report

        out = root / "toy_rlvr" if root else RLVR_DIR
        manifest = build_rlvr(out, rlvr_spec, base_dir=base, critic_base_dir=critic_base,
                              show_progress=not args.quiet)
        print(f"wrote {out}: actor {manifest['actor_weights_hash']}, critic {manifest['critic_weights_hash']} "
              f"({manifest['build_seconds']:.0f} s)")
        print(report(manifest["probe"]))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run one command. Expected failures (a bad config, a malformed file, an unreachable store,
    an unwritable folder) end in one ``error:`` line and exit code 2; Ctrl-C in one line that says
    how to continue, exit code 130."""
    args = _parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    quiet_libraries()
    deliver_swallowed_interrupts()
    try:
        return args.func(args)
    except (UserError, FileNotFoundError, FloatingPointError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except Interrupted as err:
        print(f"\ninterrupted: {err}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
