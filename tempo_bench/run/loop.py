"""The TTT loop (DESIGN section 3), read top to bottom. Every phase is named and timed:

    rollout -> grade -> reward -> advantage -> policy -> sync -> critic -> eval -> log

Methods differ only in ``rewards``, ``advantages`` and their critic schedule. The hidden answers
of the test questions (``task.answer_key``) are used only by the metrics code below (``truth``,
:mod:`tempo_bench.run.evaluation`) and by a method flagged ``uses_test_labels`` (the oracle).
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

from tempo_bench.core import metrics as M
from tempo_bench.run.checkpoint import check_resumable, latest_checkpoint, restore_policy, save_checkpoint
from tempo_bench.config import RunConfig, config_identity, flatten
from tempo_bench.critic.model import Critic
from tempo_bench.run.evaluation import evaluate, grade
from tempo_bench.core.loggers import Logger
from tempo_bench.methods.base import Method, RolloutBatch
from tempo_bench.methods.catalog import method_class
from tempo_bench.policy.model import (
    load_policy,
    load_tokenizer,
    policy_update,
    prompt_renderer,
    save_adapter,
    trainable_parameters,
)
from tempo_bench.rollout import SamplingParams, get_backend
from tempo_bench.critic.ops import CriticOps, critic_quality, generation_batch, starting_critic
from tempo_bench.grading.answers import Grader
from tempo_bench.grading.pool import make_grader
from tempo_bench.tasks import LabeledQuestion, Question, TaskData, load_task_data


class PhaseTimer:
    """Wall seconds per named phase, accumulated over a step; ``current`` names the phase running."""

    def __init__(self):
        self.seconds: dict[str, float] = {}
        self.current: str | None = None

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        start, self.current = time.perf_counter(), name
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
    on_step=None,
    resume: bool = False,
) -> RunResult:
    """Run one method for ``config.train.steps`` steps (or until ``train.budget_tokens``),
    logging every step to ``logger``. ``on_step(step, eval_metrics_or_None)`` is called after
    each step (a sweep's heartbeat and pruning; it may raise to stop the run). With ``resume``,
    continue from the latest checkpoint in ``out_dir``; steps the logger already holds (logged
    after that checkpoint, before the run stopped) are recomputed but not logged twice."""
    from tqdm.auto import tqdm

    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    # the initial evaluation is cached only for the config's own data (a test may pass a task
    # whose hidden answers were shuffled)
    cache_initial_eval = task is None
    task = task or load_task_data(config.task)
    out_dir = Path(out_dir or Path(config.out) / f"{config.method}-s{config.seed}")
    tokenizer = load_tokenizer(config.model.path)
    render = prompt_renderer(tokenizer, config.model)
    if render is not None:  # the prompts as the model saw them in instruction tuning
        task = task.with_prompts(render)
    eval_questions = task.test[: config.eval.size] if config.eval.size else task.test

    cls = method_class(config.method)
    method: Method = cls(config.method_options(), n_train=config.rollout.n)
    pool, probe_questions = split_labeled(task, config, method)
    if cls.uses_test_labels:
        method.answer_key = task.answer_key  # the oracle only; its runs are tagged below
    grader = make_grader(task.grader, config.grading.workers, config.grading.timeout_s)
    policy = load_policy(config.model, config.lora)
    backend = get_backend(config.rollout.backend).create(config, policy, tokenizer, out_dir)
    optimizer = torch.optim.AdamW(
        trainable_parameters(policy), lr=config.train.lr, weight_decay=config.train.weight_decay
    )
    sampling = SamplingParams(
        n=method.samples_per_prompt(),
        temperature=config.rollout.temperature,
        top_p=config.rollout.top_p,
        max_new_tokens=config.rollout.max_new_tokens,
    )
    ops = None
    if cls.uses_critic:
        critic = starting_critic(config, backend, tokenizer.pad_token_id, pool, sampling,
                                 Path(config.out) / "critics", grader)
        ops = CriticOps(critic, backend, tokenizer.pad_token_id, pool, probe_questions, config.critic,
                        sampling, config.seed, log_text=logger.log_text, grader=grader)

    if not resume:  # a resumed run keeps the params and tags it was started with
        logger.set_tags({
            "method": config.method, "task": task.name, "seed": str(config.seed),
            "preset": config.preset, "git_commit": git_commit(), "config_identity": config_identity(config),
            "uses_test_labels": str(cls.uses_test_labels).lower(),
            **({"oracle": "USES TEST LABELS"} if cls.uses_test_labels else {}),
        })
        logger.log_params(flatten(config.model_dump()))
        logger.log_text(json.dumps(config.model_dump(), indent=2), "config.json")

    result = RunResult(run_id=logger.run_id, out_dir=out_dir)
    tokens = {"tokens/rollout": 0, "tokens/policy": 0, "tokens/eval": 0}
    first_step, logged_until = 1, -1
    if resume:
        first_step, logged_until = _resume(out_dir, logger, policy, optimizer, ops, method, result, tokens, config)
        backend.sync_weights()  # the restored adapter, not the one the starting critic was built with

    def checkpoint(step: int) -> None:
        state = {"run_id": logger.run_id, "tokens": tokens, "method": method.state_dict(),
                 "evals": result.evals, "steps": result.steps, "config": config.model_dump(),
                 "critic_counters": {"tokens": ops.tokens, "estep_count": ops.estep_count} if ops else None}
        save_checkpoint(out_dir, step, policy, optimizer, ops.critic if ops else None, state)

    def log_metrics(values: dict, step: int) -> None:
        if step > logged_until:  # a resumed run recomputes, but does not re-log, logged steps
            logger.log_metrics(values, step)

    def run_eval(step: int) -> dict[str, float]:
        """Evaluate, store the per-sample JSONL artefact, return the metrics to log (with the
        step's own: one batch per step, so a kill never leaves a step half logged)."""
        start = time.perf_counter()
        # the initial policy's evaluation depends on none of the method's or trial's settings
        key = json.dumps([config.model.model_dump(), config.task.model_dump(), config.eval.model_dump(),
                          config.seed, config.rollout.max_new_tokens, task.name, len(task.test)])
        if step == 0 and cache_initial_eval and key in _INITIAL_EVALS:
            values, rows, eval_tokens = _INITIAL_EVALS[key]
        else:
            with torch.random.fork_rng():
                torch.manual_seed(step_seed(config.seed, step, stream=2))
                values, rows, eval_tokens = evaluate(
                    backend, eval_questions, task.answer_key, config.eval, config.rollout.max_new_tokens, grader
                )
            if step == 0 and cache_initial_eval:
                _INITIAL_EVALS[key] = (values, rows, eval_tokens)
        tokens["tokens/eval"] += eval_tokens
        result.evals[step] = values
        if config.log.rollouts_jsonl:  # before the metrics: a replayed step rewrites the same file
            logger.log_text("\n".join(json.dumps(r) for r in rows) + "\n", f"rollouts/eval_step_{step:05d}.jsonl")
        return {**values, "tokens/eval": tokens["tokens/eval"], "time/eval": time.perf_counter() - start}

    if first_step == 1:
        log_metrics(run_eval(0), 0)
    bar = tqdm(range(first_step, config.train.steps + 1), desc=f"{config.method} s{config.seed}",
               disable=not progress, initial=first_step - 1, total=config.train.steps)
    step, over_budget = first_step - 1, False
    for step in bar:
        timer = PhaseTimer()
        torch.manual_seed(step_seed(config.seed, step, stream=1))
        questions = questions_for_step(
            task.test, step, method.unlabeled_per_step(config.train.prompts_per_step), config.seed
        ) + questions_for_step(pool, step, method.labeled_per_step(), config.seed + 1)

        with timer.phase("rollout"):
            generation = backend.generate([q.prompt for q in questions], sampling)
        with timer.phase("grade"):
            answers, clusters = grade(generation, grader)
            batch = RolloutBatch(questions, generation, answers, clusters, labeled_truth(questions, answers, grader))
            # metrics only: true correctness of the unlabeled rows, from the hidden answer key
            truth = true_correctness(questions, answers, batch.labeled_correct, task.answer_key, grader)
        if ops is not None:
            with timer.phase("critic_score"):
                batch.state_values, final = ops.critic.score(generation_batch(generation, tokenizer.pad_token_id))
                batch.final_values = final.reshape(len(questions), generation.n)
        try:  # a non-finite value stops the run here, the policy still as it was after step - 1
            with timer.phase("reward"):
                reward_out = method.rewards(batch)
                _check_finite(reward_out.rewards, step, "reward")
            with timer.phase("advantage"):
                rows = method.train_rows(batch, reward_out.rewards)
                train_batch = generation_batch(generation, tokenizer.pad_token_id, rows)
                advantages = method.advantages(batch, reward_out.rewards, rows, train_batch.mask)
                _check_finite(advantages, step, "advantage")
            with timer.phase("policy"):
                policy_stats = policy_update(
                    policy, optimizer, train_batch, advantages, config.train, config.rollout.temperature
                )
        except FloatingPointError as err:
            if step > 1:
                checkpoint(step - 1)
            raise FloatingPointError(
                f"step {step}, phase {timer.current!r}: {err}; checkpoint of step {step - 1} saved in "
                f"{out_dir / 'checkpoints'}" if step > 1 else f"step {step}, phase {timer.current!r}: {err}"
            ) from None
        with timer.phase("sync"):  # before the critic phase: E-step rollouts sample the updated policy
            backend.sync_weights()
        critic_stats = {}
        if ops is not None:
            with timer.phase("critic"):
                critic_stats = method.update_critic(step, batch, ops)
        if ops is not None and step % config.critic.probe_every == 0:
            with timer.phase("critic_probe"):
                critic_stats.update(critic_diagnostics(ops, batch, truth, step))

        tokens["tokens/rollout"] += generation.num_tokens
        tokens["tokens/policy"] += train_batch.num_tokens
        values = {
            **train_batch_metrics(batch, reward_out, truth, method.n_train),
            **{f"policy/{k}": v for k, v in policy_stats.items()},
            **critic_stats,
            **timer.metrics(),
            "time/step": sum(timer.seconds.values()),
            **tokens,
            **(ops.counters() if ops is not None else {}),
            "train/labeled_groups": float(sum(batch.is_labeled(i) for i in range(len(questions)))),
            "train/rows": float(len(rows)),
        }
        result.steps[step] = values
        spent = tokens["tokens/rollout"] + tokens["tokens/policy"] + (
            ops.tokens["tokens/critic"] + ops.tokens["tokens/estep_rollout"] if ops is not None else 0)
        over_budget = config.train.budget_tokens is not None and spent >= config.train.budget_tokens
        if step % config.eval.every == 0 or step == config.train.steps or over_budget:
            values = {**values, **run_eval(step)}
        log_metrics(values, step)
        bar.set_postfix(reward=f"{values['reward/mean']:.2f}", maj_ratio=f"{values['ttt/majority_ratio']:.2f}")
        if config.train.checkpoint_every and (step % config.train.checkpoint_every == 0 or over_budget
                                              or step == config.train.steps):
            checkpoint(step)
        if on_step is not None:
            on_step(step, result.evals.get(step))
        if over_budget:
            print(f"token budget reached after step {step} ({spent:,} >= {config.train.budget_tokens:,})")
            break

    # what the analysis reads to tell a run that ran its course from one that stopped early
    logger.set_tags({"stop_reason": "token budget" if over_budget else "steps", "steps_done": str(step)})
    adapter_dir = save_adapter(policy, out_dir / "adapter")
    logger.log_artifacts(adapter_dir, "adapter")
    if ops is not None:
        logger.log_artifacts(ops.critic.save(out_dir / "critic"), "critic")
    backend.close()
    grader.close()
    return result


_INITIAL_EVALS: dict[str, tuple] = {}

def _resume(out_dir, logger, policy, optimizer, ops, method, result, tokens, config) -> tuple[int, int]:
    """Load the latest checkpoint of ``out_dir`` into the run; returns (first step to run, last
    step the logger already holds)."""
    path = latest_checkpoint(out_dir)
    if path is None:
        raise ValueError(f"nothing to resume: no checkpoint under {out_dir / 'checkpoints'}")
    state = check_resumable(path, config)
    restore_policy(path, policy, optimizer)
    if ops is not None:
        ops.critic = Critic.load(path / "critic", config.critic, config.model)
        ops.tokens.update(state["critic_counters"]["tokens"])
        ops.estep_count = state["critic_counters"]["estep_count"]
    method.load_state_dict(state["method"])
    tokens.update(state["tokens"])
    result.evals.update({int(k): v for k, v in state["evals"].items()})
    result.steps.update({int(k): v for k, v in state["steps"].items()})
    print(f"resuming {out_dir.name} after step {state['step']} (checkpoint {path.name})")
    return state["step"] + 1, logger.last_step()


def run_name_of(method: str, seed: int) -> str:
    """MLflow run name: method and seed, and a marker on any method that uses test labels."""
    marker = "-USES-TEST-LABELS" if method_class(method).uses_test_labels else ""
    return f"{method}-s{seed}{marker}"


def split_labeled(task: TaskData, config: RunConfig, method: Method):
    """(pool, probe): the probe's labeled questions are held out of the pool that E-steps and
    labeled M-step rows draw from."""
    needs_labels = method.uses_critic or method.labeled_per_step() > 0
    probe_size = config.critic.probe_questions if method.uses_critic else 0
    pool, probe = task.labeled[probe_size:], task.labeled[:probe_size]
    if needs_labels and not pool:
        raise ValueError(
            f"method {config.method!r} needs labeled questions, but the labeled pool has "
            f"{len(task.labeled)} (probe: {probe_size}); raise task.labeled_size"
        )
    return pool, probe


def labeled_truth(questions: list[Question], answers, grader: Grader) -> list[list[bool] | None]:
    """True correctness of labeled groups (their labels are visible); None for unlabeled ones."""
    labeled = [i for i, q in enumerate(questions) if isinstance(q, LabeledQuestion)]
    checked = dict(zip(labeled, grader.check([questions[i].answer for i in labeled], [answers[i] for i in labeled])))
    return [checked.get(i) for i in range(len(questions))]


def true_correctness(questions: list[Question], answers, labeled: list[list[bool] | None], answer_key,
                     grader: Grader) -> np.ndarray:
    """[G, N] true correctness of every row: labeled rows from their labels, unlabeled rows from
    the hidden key (metrics code only)."""
    hidden = [i for i, known in enumerate(labeled) if known is None]
    checked = dict(zip(hidden, grader.check([answer_key.answer(questions[i].id) for i in hidden],
                                            [answers[i] for i in hidden])))
    return np.array([known if known is not None else checked[i] for i, known in enumerate(labeled)], dtype=bool)


def critic_diagnostics(ops, batch: RolloutBatch, truth: np.ndarray, step: int) -> dict[str, float]:
    """critic/probe/* (held-out labeled probe), critic/test/* (this step's unlabeled rows, hidden
    labels) and their gap: the critic's transfer gap."""
    values = dict(ops.probe(step))
    groups = batch.unlabeled_groups
    if groups and batch.final_values is not None:
        test = critic_quality(batch.final_values[groups].numpy(), truth[groups])
        values.update({f"critic/test/{k}": v for k, v in test.items()})
        for k in ("ece", "brier", "auroc_within"):
            values[f"critic/gap/{k}"] = values[f"critic/test/{k}"] - values[f"critic/probe/{k}"]
    return values


def _check_finite(values: torch.Tensor, step: int, phase: str) -> None:
    if not torch.isfinite(values).all():
        raise FloatingPointError(f"non-finite values at step {step}, phase {phase!r}")


def train_batch_metrics(batch: RolloutBatch, reward_out, truth: np.ndarray, n_train: int) -> dict[str, float]:
    """Reward quality of the rewards the method trains on (the first n_train samples of each
    unlabeled group), voting and diversity statistics on all samples of the unlabeled groups.
    Empty for a method that trains on labeled questions only."""
    groups = batch.unlabeled_groups
    if not groups:
        return {"reward/mean": float(reward_out.rewards.mean()), "ttt/majority_ratio": float("nan")}
    rewards = reward_out.rewards.numpy()[groups]
    trained_r, trained_y = rewards[:, :n_train], truth[groups, :n_train]
    clusters = [batch.clusters[i] for i in groups]
    return {
        "reward/mean": float(trained_r.mean()),
        "reward/pointbiserial": M.pointbiserial(trained_r, trained_y),
        "reward/auroc": M.auroc(trained_r, trained_y),
        "reward/auroc_within": M.auroc_within(trained_r, trained_y),
        "reward/accuracy": M.reward_accuracy(trained_r, trained_y, reward_out.threshold),
        "train/accuracy": float(trained_y.mean()),
        "ttt/majority_ratio": M.majority_ratio(clusters),
        "ttt/label_accuracy": M.maj_at_k(clusters, truth[groups]),
        "div/distinct_answers": M.distinct_answers(clusters),
        "div/answer_entropy": M.answer_entropy(clusters),
        "div/distinct_2": M.distinct_2([[batch.generation.texts[r] for r in batch.generation.group(i)] for i in groups]),
        "train/response_length": float(np.mean([len(batch.generation.token_ids[r]) for i in groups
                                                for r in batch.generation.group(i)])),
    }
