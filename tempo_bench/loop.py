"""The TTT loop (DESIGN section 3), read top to bottom. Every phase is named and timed:

    rollout -> grade -> reward -> advantage -> policy -> critic -> sync -> eval -> log

Methods differ only in ``rewards``, ``advantages`` and (later) their critic schedule. The hidden
answers of the test questions (``task.answer_key``) are used only by the metrics code below
(``truth`` and :mod:`tempo_bench.evaluation`), never passed to the method.
"""

from __future__ import annotations

import json
import random
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from tempo_bench import metrics as M
from tempo_bench.config import RunConfig, flatten
from tempo_bench.evaluation import evaluate, grade
from tempo_bench.loggers import Logger
from tempo_bench.methods import Method, RolloutBatch, method_class
from tempo_bench.policy import (
    load_policy,
    load_tokenizer,
    make_train_batch,
    policy_update,
    save_adapter,
    trainable_parameters,
)
from tempo_bench.rollout import SamplingParams, get_backend
from tempo_bench.tasks import Question, TaskData, get_task


class PhaseTimer:
    """Wall seconds per named phase, accumulated over a step."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {f"time/{name}": s for name, s in self.seconds.items()}


@dataclass
class RunResult:
    run_id: str | None
    out_dir: Path
    evals: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> eval metrics
    steps: dict[int, dict[str, float]] = field(default_factory=dict)  # step -> train metrics


def step_seed(seed: int, step: int, stream: int) -> int:
    """A seed per (run seed, step, stream): each step's sampling is reproducible on its own,
    and evaluation draws never shift the training stream."""
    return (seed * 1_000_003 + step * 7919 + stream * 104_729) % (2**63)


def questions_for_step(questions: list[Question], step: int, per_step: int, seed: int) -> list[Question]:
    """The questions of training step ``step`` (1-based): epochs of seeded permutations."""
    out = []
    for slot in range((step - 1) * per_step, step * per_step):
        epoch, pos = divmod(slot, len(questions))
        order = list(range(len(questions)))
        random.Random(step_seed(seed, epoch, stream=3)).shuffle(order)
        out.append(questions[order[pos]])
    return out


def git_commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).resolve().parent,
        ).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_ttt(
    config: RunConfig,
    logger: Logger,
    task: TaskData | None = None,
    out_dir: Path | None = None,
    progress: bool = True,
) -> RunResult:
    """Run one method for ``config.train.steps`` steps, logging every step to ``logger``."""
    from tqdm.auto import tqdm

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    task = task or get_task(config.task)
    out_dir = Path(out_dir or Path(config.out) / f"{config.method}-s{config.seed}")
    eval_questions = task.test[: config.eval.size] if config.eval.size else task.test

    tokenizer = load_tokenizer(config.model.path)
    policy = load_policy(config.model, config.lora)
    backend = get_backend(config.rollout.backend)(policy, tokenizer)
    cls = method_class(config.method)
    method: Method = cls(config.method_options(), n_train=config.rollout.n)
    optimizer = torch.optim.AdamW(
        trainable_parameters(policy), lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    sampling = SamplingParams(
        n=method.samples_per_prompt(),
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        max_new_tokens=config.rollout.max_new_tokens,
    )

    logger.set_tags({
        "method": config.method, "task": task.name, "seed": str(config.seed),
        "preset": config.preset, "git_commit": git_commit(),
        "uses_test_labels": str(cls.uses_test_labels).lower(),
    })
    logger.log_params(flatten(config.model_dump()))
    logger.log_text(json.dumps(config.model_dump(), indent=2), "config.json")

    result = RunResult(run_id=logger.run_id, out_dir=out_dir)
    tokens = {"tokens/rollout": 0, "tokens/policy": 0, "tokens/eval": 0}

    def run_eval(step: int) -> None:
        start = time.perf_counter()
        with torch.random.fork_rng():
            torch.manual_seed(step_seed(config.seed, step, stream=2))
            values, rows, eval_tokens = evaluate(
                backend, eval_questions, task.answer_key, config.eval, config.rollout.max_new_tokens
            )
        tokens["tokens/eval"] += eval_tokens
        result.evals[step] = values
        timing = {"tokens/eval": tokens["tokens/eval"], "time/eval": time.perf_counter() - start}
        logger.log_metrics({**values, **timing}, step)
        if config.log.rollouts_jsonl:
            logger.log_text("\n".join(json.dumps(r) for r in rows) + "\n", f"rollouts/eval_step_{step:05d}.jsonl")

    run_eval(0)
    bar = tqdm(range(1, config.train.steps + 1), desc=f"{config.method} s{config.seed}", disable=not progress)
    for step in bar:
        timer = PhaseTimer()
        torch.manual_seed(step_seed(config.seed, step, stream=1))
        questions = questions_for_step(task.test, step, config.train.prompts_per_step, config.seed)

        with timer.phase("rollout"):
            generation = backend.generate([q.prompt for q in questions], sampling)
        with timer.phase("grade"):
            answers, clusters = grade(generation, task.extract_answer)
            batch = RolloutBatch(questions, generation, answers, clusters)
            # metrics only: true correctness from the hidden answer key
            truth = np.array([[task.answer_key.is_correct_answer(q.id, a) for a in row]
                              for q, row in zip(questions, answers)])
        with timer.phase("reward"):
            reward_out = method.rewards(batch)
            _check_finite(reward_out.rewards, step, "reward")
        with timer.phase("advantage"):
            advantages = method.advantages(reward_out.rewards)  # [G, n_train]
            _check_finite(advantages, step, "advantage")
        with timer.phase("policy"):
            rows = [i * sampling.n + j for i in range(len(questions)) for j in range(method.n_train)]
            train_batch = make_train_batch(
                [generation.prompt_ids[r // sampling.n] for r in rows],
                [generation.token_ids[r] for r in rows],
                tokenizer.pad_token_id,
            )
            policy_stats = policy_update(
                policy, optimizer, train_batch, advantages.reshape(-1), config.train,
                config.rollout.temperature,
            )
        with timer.phase("sync"):
            backend.sync_weights()

        tokens["tokens/rollout"] += generation.num_tokens
        tokens["tokens/policy"] += train_batch.num_tokens
        values = {
            **train_batch_metrics(batch, reward_out, truth, method.n_train),
            **{f"policy/{k}": v for k, v in policy_stats.items()},
            **timer.metrics(),
            "time/step": sum(timer.seconds.values()),
            "tokens/rollout": tokens["tokens/rollout"],
            "tokens/policy": tokens["tokens/policy"],
        }
        result.steps[step] = values
        logger.log_metrics(values, step)
        if step % config.eval.every == 0 or step == config.train.steps:
            run_eval(step)
        bar.set_postfix(reward=f"{values['reward/mean']:.2f}", acc=f"{values['train/accuracy']:.2f}",
                        maj_ratio=f"{values['ttt/majority_ratio']:.2f}")

    adapter_dir = save_adapter(policy, out_dir / "adapter")
    logger.log_artifacts(adapter_dir, "adapter")
    backend.close()
    return result


def _check_finite(values: torch.Tensor, step: int, phase: str) -> None:
    if not torch.isfinite(values).all():
        raise FloatingPointError(f"non-finite values at step {step}, phase {phase!r}")


def train_batch_metrics(batch: RolloutBatch, reward_out, truth: np.ndarray, n_train: int) -> dict[str, float]:
    """Reward quality on the rewards the method trains on (the first n_train samples of each
    group), voting and diversity statistics on all samples."""
    rewards = reward_out.rewards.numpy()
    trained_r, trained_y = rewards[:, :n_train], truth[:, :n_train]
    values = {
        "reward/mean": float(trained_r.mean()),
        "reward/pointbiserial": M.pointbiserial(trained_r, trained_y),
        "reward/auroc": M.auroc(trained_r, trained_y),
        "reward/auroc_within": M.auroc_within(trained_r, trained_y),
        "reward/accuracy": M.reward_accuracy(trained_r, trained_y, reward_out.threshold),
        "train/accuracy": float(trained_y.mean()),
        "ttt/majority_ratio": M.majority_ratio(batch.clusters),
        "ttt/label_accuracy": M.maj_at_k(batch.clusters, truth),
        "div/distinct_answers": M.distinct_answers(batch.clusters),
        "div/answer_entropy": M.answer_entropy(batch.clusters),
        "div/distinct_2": M.distinct_2(
            [[batch.generation.texts[r] for r in batch.generation.group(i)] for i in range(len(batch.questions))]
        ),
        "train/response_length": float(np.mean([len(t) for t in batch.generation.token_ids])),
    }
    return values

