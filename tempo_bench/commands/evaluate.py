"""`tempo-bench eval`: a saved adapter on a task, and with lm-evaluation-harness."""

from __future__ import annotations

import tempfile
from pathlib import Path

from tempo_bench.config import ModelConfig
from tempo_bench.core.errors import ConfigError
from tempo_bench.experiments import adapter_eval as E
from tempo_bench.policy.model import load_tokenizer, prompt_renderer, resolve_device


def add_parser(sub) -> None:
    ev = sub.add_parser("eval", help="evaluate a saved policy adapter on a task (and with lm-eval)")
    ev.add_argument("--adapter", required=True, help="peft adapter folder (a run's .../adapter)")
    ev.add_argument("--task", required=True, help="toy, a benchmark (aime24, aime25, amc, math500, gsm8k, gpqa), "
                    "or a task file (.yaml)")
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


def cmd_eval(args) -> int:
    for flag, value in (("--limit", args.limit), ("--k", args.k), ("--max-new-tokens", args.max_new_tokens)):
        if value is not None and value < 1:  # --limit -1 scored 63 of 64 questions; --k 0 a traceback
            raise ConfigError(f"{flag} must be >= 1, got {value}")
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
