"""One TTT run (DESIGN section 3). :func:`build_run` does the setup once; :meth:`Run.step` is the
loop body, read top to bottom, every phase named and timed:

    rollout -> grade -> critic_score | confidence -> reward -> advantage -> policy -> sync -> critic -> critic_probe

One :class:`~tempo_bench.methods.base.RolloutBatch` flows forward through the phases, each filling
in its part; the method's hooks read and write it. Methods differ only in how their batch is made
up, their reward, their advantage and their critic schedule. The hidden answers of the test
questions (``task.answer_key``) reach only the metrics code (:mod:`tempo_bench.run.step_metrics`,
:mod:`tempo_bench.run.evaluation`) and a method flagged ``uses_test_labels`` (the oracle).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from tempo_bench.config import RunConfig, config_identity, flatten
from tempo_bench.core.loggers import Logger
from tempo_bench.core.processes import stop_requested
from tempo_bench.core.seeds import Stream, questions_for_step, step_seed
from tempo_bench.critic.model import Critic
from tempo_bench.critic.ops import CriticOps, sharded_critic, starting_critic
from tempo_bench.grading.answers import Grader
from tempo_bench.grading.pool import make_grader
from tempo_bench.methods.base import Method, RolloutBatch
from tempo_bench.methods.catalog import method_class
from tempo_bench.policy.batch import generation_batch
from tempo_bench.policy.model import load_policy, load_tokenizer, trainable_parameters
from tempo_bench.policy.sharding import shard_from_rank0
from tempo_bench.policy.scoring import confidence_scores
from tempo_bench.policy.update import policy_update
from tempo_bench.rollout import SamplingParams, get_backend
from tempo_bench.rollout.base import RolloutBackend
from tempo_bench.run.caches import RunCaches, initial_eval_key
from tempo_bench.run.checkpoint import check_resumable, export_policy, latest_checkpoint, restore_policy, save_checkpoint
from tempo_bench.run.checkpoint import hold_run_folder, set_aside_damaged
from tempo_bench.run.distributed import Ranks, generate_share
from tempo_bench.run.evaluation import evaluate, evaluate_extras, question_accuracy, question_table
from tempo_bench.run.inputs import longest_prompt, prompted_task, split_labeled
from tempo_bench.run.provenance import git_commit, run_name_of
from tempo_bench.run.records import PhaseTimer, RunResult
from tempo_bench.run.step_metrics import (
    critic_diagnostics,
    train_batch_metrics,
    true_correctness,
)
from tempo_bench.tasks import LabeledQuestion, Question, TaskData, load_eval_task, load_task_data

RUN_TOKENS = ("tokens/rollout", "tokens/policy", "tokens/eval")
CRITIC_TOKENS = ("tokens/critic", "tokens/estep_rollout")


@dataclass
class Run:
    """Everything one run holds. ``tokens`` is the run's one compute counter: the critic's
    procedures add their own tokens to it, and the budget reads all of them."""

    config: RunConfig
    logger: Logger
    task: TaskData
    out_dir: Path
    caches: RunCaches
    method: Method
    pool: list[LabeledQuestion]  # D_L for E-steps and labeled M-step rows
    eval_questions: list[Question]
    grader: Grader
    policy: torch.nn.Module
    tokenizer: object
    backend: RolloutBackend
    optimizer: torch.optim.Optimizer
    sampling: SamplingParams
    critic_ops: CriticOps | None
    tokens: dict[str, int]
    result: RunResult
    logged_until: int = -1  # a resumed run recomputes, but does not re-log, steps up to here
    ranks: Ranks = Ranks()  # a data-parallel run's ranks (tempo_bench.run.distributed)
    extra_evals: tuple[TaskData, ...] = ()  # eval.tasks: benchmarks evaluated beside the test set

    # -- the loop body ----------------------------------------------------------------------
    def step(self, step: int) -> dict[str, float]:
        """One training step; returns its metrics (evaluation not included)."""
        config, method, ops, timer = self.config, self.method, self.critic_ops, PhaseTimer()
        torch.manual_seed(step_seed(config.seed, step, Stream.TRAIN))
        questions = self.questions_for(step)
        with timer.phase("rollout"):  # all of them, unless several ranks split the step
            local = generate_share(self.backend, self.ranks, [q.prompt for q in questions], self.sampling, config, step)
        with timer.phase("grade"):
            generation, answers, clusters = self.ranks.gather_graded(local, self.grader.grade_generation(local))
            batch = RolloutBatch.from_answers(questions, generation, answers, clusters, self.grader, step)
            truth = true_correctness(batch, self.task.answer_key, self.grader)  # metrics only
        if ops is not None:
            with timer.phase("critic_score"):
                # rank 0's critic scores for every rank (replicas may drift apart in the last bits)
                batch.state_values, final = self.ranks.from_main(
                    lambda: ops.critic.score(generation_batch(generation, self.pad_id)))
                batch.final_values = final.reshape(len(questions), generation.n)
        temperature, confidence_tokens = method.confidence_temperature(config.rollout.temperature), 0
        if temperature is not None:
            with timer.phase("confidence"):
                batch.confidence, confidence_tokens = self.ranks.from_main(lambda: self.confidence(generation, temperature))
        with self.stop_on_non_finite(step, timer):
            with timer.phase("reward"):
                reward = method.rewards(batch)
                batch.rewards, batch.reward_threshold = _finite(reward.rewards, "reward"), reward.threshold
            with timer.phase("advantage"):
                batch.rows = method.train_rows(batch)
                if batch.rows:  # (a method may train on no row in a step: then no update)
                    batch.train = generation_batch(generation, self.pad_id, batch.rows)
                    batch.advantages = _finite(method.advantages(batch), "advantage")
            with timer.phase("policy"):
                policy_stats = {} if not batch.rows else policy_update(
                    self.policy, self.optimizer, batch.train, batch.advantages, config.train, config.rollout.temperature,
                    self.ranks)
        with timer.phase("sync"):  # before the critic phase: E-step rollouts sample the updated policy
            self.backend.sync_weights()
        critic_stats = {}
        if ops is not None:
            with timer.phase("critic"):
                critic_stats = method.update_critic(step, batch, ops)
            if step % config.critic.probe_every == 0:
                with timer.phase("critic_probe"):  # the probe's samples: the E-step's, or drawn now
                    critic_stats.update(critic_diagnostics(ops.probe(step, batch.probe), batch, truth))
        # counted once the step is through (a step stopped by a non-finite value counts nothing)
        self.tokens["tokens/rollout"] += generation.num_tokens
        self.tokens["tokens/policy"] += batch.train.num_tokens if batch.train is not None else 0
        if confidence_tokens:
            self.tokens["tokens/confidence"] += confidence_tokens
        return {
            **train_batch_metrics(batch, truth, method.n_train),
            **{f"policy/{k}": v for k, v in policy_stats.items()},
            **critic_stats,
            **timer.metrics(),
            "time/step": sum(timer.seconds.values()),
            **self.tokens,
            **({"critic/estep_count": ops.estep_count} if ops is not None else {}),
            "train/labeled_groups": float(sum(batch.is_labeled(i) for i in range(len(questions)))),
            "train/rows": float(len(batch.rows)),
        }

    def confidence(self, generation, temperature: float) -> tuple[dict[str, torch.Tensor], int]:
        """The confidence phase: the policy's mean token self-certainty and entropy over each of
        the step's samples, [G, N] each, and the tokens of this teacher-forced pass (training
        compute). Without micro_batch_rows, rows go in chunks the size of a policy minibatch."""
        sequences, train = generation_batch(generation, self.pad_id), self.config.train
        rows = train.micro_batch_rows or -(-sequences.input_ids.shape[0] // train.minibatches)
        scores = confidence_scores(self.policy, sequences, temperature, rows)
        shaped = {name: values.reshape(generation.num_prompts, generation.n) for name, values in scores.items()}
        return shaped, sequences.num_tokens

    def questions_for(self, step: int) -> list[Question]:
        """The step's unlabeled test questions, then its labeled ones (the method's make-up)."""
        shape = self.method.step_shape(self.config.train.prompts_per_step)
        return (questions_for_step(self.task.test, step, shape.unlabeled, self.config.seed)
                + questions_for_step(self.pool, step, shape.labeled, self.config.seed, Stream.LABELED_ORDER))

    @property
    def pad_id(self) -> int:
        return self.tokenizer.pad_token_id

    @contextmanager
    def stop_on_non_finite(self, step: int, timer: PhaseTimer) -> Iterator[None]:
        """A non-finite value stops the run in the phase that made it, the policy still as it
        was after step - 1 (saved as a checkpoint)."""
        try:
            yield
        except FloatingPointError as err:
            where = f"step {step}, phase {timer.current!r}: {err}"
            if step > 1 and self.ranks.main and not self.ranks.sharded:  # (a sharded save needs every rank)
                self.checkpoint(step - 1)
                where += f"; checkpoint of step {step - 1} saved in {self.out_dir / 'checkpoints'}"
            raise FloatingPointError(where) from None

    # -- evaluation, logging, budget ----------------------------------------------------------
    def evaluate(self, step: int) -> dict[str, float]:
        """Evaluate, store the per-sample JSONL artefact, return the metrics to log (with the
        step's own: one batch per step, so a kill never leaves a step half logged)."""
        start = time.perf_counter()
        key = initial_eval_key(self.config, self.task)  # the initial policy's is shared across runs
        if step == 0 and key in self.caches.initial_evals:
            values, rows, eval_tokens = self.caches.initial_evals[key]
        else:
            with torch.random.fork_rng():
                torch.manual_seed(step_seed(self.config.seed, step, Stream.EVAL))
                values, rows, eval_tokens = evaluate(self.backend, self.eval_questions, self.task.answer_key,
                                                     self.config.eval, self.config.eval_max_new_tokens(), self.grader)
                more = evaluate_extras(self.backend, self.extra_evals, self.config.eval, self.config.eval_max_new_tokens())
                values, rows, eval_tokens = {**values, **more[0]}, rows + more[1], eval_tokens + more[2]
            if step == 0:
                self.caches.initial_evals[key] = (values, rows, eval_tokens)
        self.tokens["tokens/eval"] += eval_tokens
        self.result.evals[step] = values
        kept = self.result.question_accuracy  # the first evaluation's and this one's
        self.result.question_accuracy = {s: kept[s] for s in kept if s == min(kept)} | {step: question_accuracy(rows)}
        if self.config.log.rollouts_jsonl:  # before the metrics: a replayed step rewrites the same file
            self.logger.log_text("\n".join(json.dumps(r) for r in rows) + "\n", f"rollouts/eval_step_{step:05d}.jsonl")
        return {**values, "tokens/eval": self.tokens["tokens/eval"], "time/eval": time.perf_counter() - start}

    def log(self, values: dict[str, float], step: int) -> None:
        if step > self.logged_until and self.ranks.main:
            self.logger.log_metrics(values, step)

    def spent_tokens(self) -> int:
        """Training compute: rollouts, policy updates and the critic's work (evaluation excluded)."""
        return sum(count for name, count in self.tokens.items() if name != "tokens/eval")

    def over_budget(self) -> bool:
        budget = self.config.train.budget_tokens
        return budget is not None and self.spent_tokens() >= budget

    # -- start, checkpoint, resume, finish ----------------------------------------------------
    def start(self) -> None:
        """Tag a new run and log its configuration (a resumed run keeps those it started with)."""
        config, uses_labels = self.config, type(self.method).uses_test_labels
        self.logger.set_tags({
            "method": config.method, "task": self.task.name, "seed": str(config.seed),
            "preset": config.preset, "git_commit": git_commit(), "config_identity": config_identity(config),
            "uses_test_labels": str(uses_labels).lower(),
            **({"oracle": "USES TEST LABELS"} if uses_labels else {}),
        })
        self.logger.log_params(flatten(config.model_dump()))
        self.logger.log_text(json.dumps(config.model_dump(), indent=2), "config.json")

    def checkpoint(self, step: int) -> None:
        ops = self.critic_ops
        state = {"run_id": self.logger.run_id, "tokens": self.tokens, "method": self.method.state_dict(),
                 "evals": self.result.evals, "steps": self.result.steps, "config": self.config.model_dump(),
                 "question_accuracy": self.result.question_accuracy,
                 "critic_counters": {"estep_count": ops.estep_count} if ops else None,
                 "critic_layout": self.config.critic_layout() if ops else None}
        save_checkpoint(self.out_dir, step, self.policy, self.optimizer, ops.critic if ops else None, state, self.ranks)

    def resume(self) -> int:
        """Load the latest checkpoint of the run's folder; returns the step it holds."""
        if self.ranks.main:  # a warning for each checkpoint a full disk or a kill damaged
            set_aside_damaged(self.out_dir)
        self.ranks.barrier()
        path = latest_checkpoint(self.out_dir)
        if path is None:
            raise ValueError(f"nothing to resume: no checkpoint under {self.out_dir / 'checkpoints'}")
        state = check_resumable(path, self.config)
        restore_policy(path, self.policy, self.optimizer)
        if self.critic_ops is not None:
            self.critic_ops.critic = sharded_critic(self.config, self.ranks, path / "critic") if self.ranks.sharded \
                else Critic.load(path / "critic", self.config.critic, self.config.model, self.policy, self.config.lora)
            self.critic_ops.estep_count = state["critic_counters"]["estep_count"]
            self.tokens.update(state["critic_counters"].get("tokens", {}))  # checkpoints before 2026-12
        self.method.load_state_dict(state["method"])
        self.tokens.update(state["tokens"])
        self.result.evals.update({int(k): v for k, v in state["evals"].items()})
        self.result.steps.update({int(k): v for k, v in state["steps"].items()})
        self.result.question_accuracy = {int(k): v for k, v in state.get("question_accuracy", {}).items()}
        self.logged_until = self.logger.last_step()
        self.backend.sync_weights()  # the restored adapter, not the one the starting critic was built with
        print(f"resuming {self.out_dir.name} after step {state['step']} (checkpoint {path.name})")
        return state["step"]

    def finish(self, over_budget: bool, steps_done: int, policy_dir: Path, critic_dir: Path | None) -> None:
        """What the analysis reads to tell a run that ran its course from one that stopped early,
        and the trained policy (export_policy's folder) and critic as artefacts."""
        self.logger.set_tags({"stop_reason": "token budget" if over_budget else "steps", "steps_done": str(steps_done)})
        self.logger.log_artifacts(policy_dir, policy_dir.name)
        if len(self.result.question_accuracy) == 2:  # which test questions the run gained and lost
            self.logger.log_text(question_table(self.result.question_accuracy), "per_question.csv")
        if critic_dir is not None:
            self.logger.log_artifacts(critic_dir, "critic")

    def close(self) -> None:
        try:
            self.backend.close()
        finally:
            self.grader.close()

    # -- the driver ---------------------------------------------------------------------------
    def train(self, progress: bool = True, on_step=None, resume: bool = False) -> RunResult:
        """Every step from the first (or the one after the checkpoint), with evaluation,
        checkpoints and the token budget; ``on_step(step, eval_metrics_or_None)`` after each."""
        config = self.config
        first_step = self.resume() + 1 if resume else 1
        main = self.ranks.main  # only rank 0 logs and checkpoints (every rank writes its shards)
        saves = main or self.ranks.sharded
        evaluates = self.ranks.rank < self.backend.ranks_per_engine  # rank 0, with the ranks its engine spans
        if not resume:
            if main:
                self.start()
            if evaluates:
                self.log(self.evaluate(0), 0)
        bar = tqdm(range(first_step, config.train.steps + 1), desc=f"{config.method} s{config.seed}",
                   disable=not progress, initial=first_step - 1, total=config.train.steps)
        step, over_budget = first_step - 1, False
        for step in bar:
            values = self.step(step)
            self.result.steps[step] = values
            over_budget = self.over_budget()
            if evaluates and (step % config.eval.every == 0 or step == config.train.steps or over_budget):
                values = {**values, **self.evaluate(step)}
            self.log(values, step)
            bar.set_postfix(reward=f"{values['reward/mean']:.2f}", maj_ratio=f"{values['ttt/majority_ratio']:.2f}")
            last = over_budget or step == config.train.steps
            stopping = self.ranks.any(stop_requested()) and not last  # SIGTERM: a scheduler stops the job
            if saves and config.train.checkpoint_every and (step % config.train.checkpoint_every == 0 or last
                                                            or stopping):
                self.checkpoint(step)
            if stopping:
                raise KeyboardInterrupt  # the command's interruption path: run KILLED, the resume hint
            if on_step is not None:
                on_step(step, self.result.evals.get(step))
            if over_budget:
                print(f"token budget reached after step {step} ({self.spent_tokens():,} >= {config.train.budget_tokens:,})")
                break
        policy_dir = export_policy(self.policy, self.out_dir, main) if saves else None
        critic_dir = self.critic_ops.critic.save(self.out_dir / "critic", main) if saves and self.critic_ops else None
        if main:
            self.finish(over_budget, step, policy_dir, critic_dir)
        return self.result


def _finite(values: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(values).all():
        raise FloatingPointError(f"non-finite {what} values")
    return values


def build_run(config: RunConfig, logger: Logger, task: TaskData | None = None, out_dir: Path | None = None,
              caches: RunCaches | None = None, ranks: Ranks = Ranks()) -> Run:
    """Load everything a run of ``config`` needs, once: the task (``task`` overrides the config's
    data), the method, the policy and its rollout backend, the grader and, for critic methods,
    the starting critic. ``caches`` is shared by the runs of one process (compare, sweep)."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    caches = caches if caches is not None else RunCaches()
    task = task or load_task_data(config.task)
    out_dir = Path(out_dir or Path(config.out) / f"{config.method}-s{config.seed}")
    tokenizer = load_tokenizer(config.model.path)
    task = prompted_task(task, tokenizer, config.model)
    extras = tuple(prompted_task(load_eval_task(extra), tokenizer, config.model) for extra in config.eval.tasks)
    cls = method_class(config.method)
    method = cls(config.method_options(), n_train=config.rollout.n, seed=config.seed)
    pool, probe_questions = split_labeled(task, config, method)
    if cls.uses_test_labels:
        method.answer_key = task.answer_key  # the oracle only; its runs are tagged
    grader = make_grader(task.grader, config.grading.workers, config.grading.timeout_s)
    backend = None
    try:  # a failure past this point closes the grading workers and the engine it opened
        if ranks.sharded:  # built in host memory, rank 0's weights broadcast into the shards
            policy = shard_from_rank0(lambda empty: load_policy(config.policy_model(host=True), None, empty=empty),
                                      ranks.main, getattr(torch, config.model.dtype), config.train.offload)
        else:
            policy = load_policy(config.policy_model(), config.policy_lora(), caches.base_models)
        backend = get_backend(config.rollout.backend).create(config, policy, tokenizer, out_dir,
                                                             longest_prompt=longest_prompt(tokenizer, task, *extras))
        optimizer = torch.optim.AdamW(trainable_parameters(policy), lr=config.train.lr,
                                      weight_decay=config.train.weight_decay)
        sampling = SamplingParams(n=method.step_shape(config.train.prompts_per_step).samples, temperature=config.rollout.temperature,
                                  top_p=config.rollout.top_p, max_new_tokens=config.rollout.max_new_tokens)
        scores_confidence = method.confidence_temperature(config.rollout.temperature) is not None
        tokens = dict.fromkeys(RUN_TOKENS + (CRITIC_TOKENS if cls.uses_critic else ())
                               + (("tokens/confidence",) if scores_confidence else ()), 0)
        ops = None
        if cls.uses_critic:
            critic = starting_critic(config, policy, backend, tokenizer.pad_token_id, pool, sampling,
                                     Path(config.out) / "critics", grader, caches.starting_critics, ranks)
            ops = CriticOps(critic, backend, tokenizer.pad_token_id, pool, probe_questions, config.critic, sampling,
                            config.seed, log_text=logger.log_text, grader=grader, tokens=tokens, ranks=ranks)
    except BaseException:
        if backend is not None:
            backend.close()
        grader.close()
        raise
    eval_questions = task.test[: config.eval.size] if config.eval.size else task.test
    return Run(config, logger, task, out_dir, caches, method, pool, eval_questions, grader, policy, tokenizer,
               backend, optimizer, sampling, ops, tokens, RunResult(logger.run_id, out_dir), ranks=ranks,
               extra_evals=extras)


def run_ttt(config: RunConfig, logger: Logger, task: TaskData | None = None, out_dir: Path | None = None,
            progress: bool = True, on_step=None, resume: bool = False, caches: RunCaches | None = None,
            ranks: Ranks = Ranks()) -> RunResult:
    """Build a run of ``config`` and train it for ``config.train.steps`` steps (or until
    ``train.budget_tokens``), logging every step to ``logger``. ``on_step(step, evals)`` is called
    after each step (a sweep's heartbeat and pruning; it may raise to stop the run). With
    ``resume``, continue from the latest checkpoint in ``out_dir``."""
    run = build_run(config, logger, task, out_dir, caches, ranks)
    try:
        with hold_run_folder(run.out_dir) if ranks.main else nullcontext():  # rank 0 for its ranks
            return run.train(progress, on_step, resume)
    finally:
        run.close()


__all__ = ["Run", "RunCaches", "RunResult", "build_run", "run_name_of", "run_ttt"]
