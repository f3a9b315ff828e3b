"""A standard-TTT step of tempo-bench against TRL's GRPOTrainer at equal work: the same tiny model
with the same LoRA, the same prompts x generations, max new tokens, temperature and learning rate,
on CPU; TRL without vLLM, beta 0, bf16 and gradient checkpointing off (faster here), one update per
generation batch, and a majority-vote reward computed with tempo-bench's own grader."""

from __future__ import annotations

import statistics
import tempfile
import time
from dataclasses import dataclass

from tempo_bench.config import LoraConfig, ToyTaskConfig, load_config
from tempo_bench.core.loggers import MemoryLogger
from tempo_bench.core.metrics import majority_cluster
from tempo_bench.grading.answers import cluster_answers, extract_answer
from tempo_bench.policy.model import load_tokenizer, resolve_model_path
from tempo_bench.run.run import run_ttt
from tempo_bench.tasks import load_task_data


@dataclass(frozen=True)
class StepWork:
    prompts: int = 16
    generations: int = 8
    max_new_tokens: int = 80
    lr: float = 2e-4
    steps: int = 12
    warmup: int = 2  # steps left out of the median (allocator and cache warm-up)


def majority_vote_reward(generations: int):
    """TRL reward function: 1 for a completion whose answer is in its prompt's majority cluster."""
    def reward(prompts, completions, **kwargs):
        out = []
        for start in range(0, len(completions), generations):  # a prompt's completions are contiguous
            clusters = cluster_answers([extract_answer(c) for c in completions[start:start + generations]])
            best = majority_cluster(clusters)
            out += [1.0 if c is not None and c == best else 0.0 for c in clusters]
        return out

    return reward


def ours_step_seconds(work: StepWork, threads: int) -> list[float]:
    """time/step of each step of a tempo-bench standard_ttt run (evaluation excluded)."""
    # the pretrained toy model on the default addition questions: the TRL side's model and prompts
    config = load_config("toy-smoke", [
        "method=standard_ttt", "model.path=toy", "task.test_size=64",
        f"methods.standard_ttt.n_vote={work.generations}", f"rollout.n={work.generations}",
        f"rollout.max_new_tokens={work.max_new_tokens}", f"train.prompts_per_step={work.prompts}",
        f"train.lr={work.lr}", f"train.steps={work.steps}", f"eval.every={work.steps}", "eval.size=1", "eval.k=1",
        "eval.greedy=false", "log.rollouts_jsonl=false", f"threads={threads}",
    ])
    logger = MemoryLogger()
    with tempfile.TemporaryDirectory() as out:
        run_ttt(config, logger, out_dir=out, progress=False)
    return [v for _, v in sorted(logger.metrics["time/step"])]


def trl_step_seconds(work: StepWork, threads: int) -> list[float]:
    """Wall seconds of each GRPOTrainer optimiser step (generation, reward, loss, backward, step)."""
    import torch
    from datasets import Dataset
    from peft import LoraConfig as PeftLoraConfig
    from transformers import AutoModelForCausalLM, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(threads)
    lora = LoraConfig()
    prompts = [q.prompt for q in load_task_data(ToyTaskConfig()).test]
    times: list[float] = []

    class Timer(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)

    with tempfile.TemporaryDirectory() as out:
        config = GRPOConfig(
            output_dir=out, per_device_train_batch_size=work.prompts * work.generations,
            num_generations=work.generations, max_completion_length=work.max_new_tokens,
            learning_rate=work.lr, beta=0.0, use_vllm=False, bf16=False, gradient_checkpointing=False,
            use_cpu=True, max_steps=work.steps, logging_steps=10_000, save_strategy="no", report_to="none",
            num_iterations=1, temperature=1.0, top_p=1.0, top_k=0, disable_dropout=True, seed=0,
            weight_decay=0.0, max_grad_norm=1.0, lr_scheduler_type="constant", warmup_steps=0,
        )
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(resolve_model_path("toy")),
            reward_funcs=majority_vote_reward(work.generations), args=config,
            train_dataset=Dataset.from_dict({"prompt": prompts * 50}),
            processing_class=load_tokenizer("toy"),
            peft_config=PeftLoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                                       target_modules=list(lora.target_modules), task_type="CAUSAL_LM"),
            callbacks=[Timer()],
        )
        trainer.train()
    return times


def compare_steps(work: StepWork = StepWork(), threads: int = 2, rounds: int = 2) -> dict:
    """Median step of each side over ``rounds`` alternating runs (ours, TRL, ours, TRL): a slow
    spell of this shared machine then falls on both sides, not on one run (measured here: the
    same rollout 0.55 s in one run and 0.84 s in the next)."""
    ours: list[list[float]] = []
    trl: list[list[float]] = []
    for _ in range(rounds):
        ours.append(ours_step_seconds(work, threads)[work.warmup:])
        trl.append(trl_step_seconds(work, threads)[work.warmup:])
    ours_median = statistics.median(t for steps in ours for t in steps)
    trl_median = statistics.median(t for steps in trl for t in steps)
    return {"ours_step_s": ours_median, "trl_step_s": trl_median, "step_speedup_vs_trl": trl_median / ours_median,
            "ours_step_s_by_round": [statistics.median(steps) for steps in ours],
            "trl_step_s_by_round": [statistics.median(steps) for steps in trl],
            "steps_measured": sum(map(len, ours)), "rounds": rounds, "work": work.__dict__}
