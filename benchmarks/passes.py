"""Training and scoring passes on one fixed rollout batch (16 prompts x 8 samples of the toy, as in
the step comparison), each variant timed in turns with the others:

- the policy update (standard TTT's: one optimiser step, 4 length buckets) with LoRA layers as one
  autograd node (``lora.fused``, the default) and with peft's own forward;
- a forward and backward pass over the batch without and with the padding mask (training passes
  drop it: tempo_bench/policy/batch.py ``model_inputs``);
- the toy critic's fit (one epoch) and its scoring pass over the same rows.
"""

from __future__ import annotations

import torch

from tempo_bench.benchmarks.timing import in_turns
from tempo_bench.config import CriticConfig, LoraConfig, ModelConfig, ToyTaskConfig, TrainConfig
from tempo_bench.critic.model import Critic
from tempo_bench.policy.batch import generation_batch, model_inputs
from tempo_bench.policy.model import load_policy, load_tokenizer, trainable_parameters
from tempo_bench.policy.update import policy_update
from tempo_bench.rollout import SamplingParams, get_backend
from tempo_bench.tasks import load_task_data


def compare_passes(prompts: int = 16, n: int = 8, max_new_tokens: int = 80, reps: int = 7, threads: int = 2) -> dict:
    torch.set_num_threads(threads)
    tokenizer = load_tokenizer("toy")
    fused = load_policy(ModelConfig(), LoraConfig())
    unfused = load_policy(ModelConfig(), LoraConfig(fused=False))
    texts = [q.prompt for q in load_task_data(ToyTaskConfig()).test[:prompts]]
    torch.manual_seed(0)
    generation = get_backend("hf")(fused, tokenizer).generate(
        texts, SamplingParams(n=n, temperature=1.0, max_new_tokens=max_new_tokens))
    batch = generation_batch(generation, tokenizer.pad_token_id)
    advantages = torch.linspace(-1.0, 1.0, batch.input_ids.shape[0])
    train_cfg = TrainConfig()
    optimizers = {id(m): torch.optim.AdamW(trainable_parameters(m), lr=1e-6) for m in (fused, unfused)}
    critic = Critic.from_pretrained("toy", CriticConfig())
    targets = torch.tensor([1.0, -1.0]).repeat(batch.input_ids.shape[0] // 2 + 1)[: batch.input_ids.shape[0]]

    def update(model):
        return lambda: policy_update(model, optimizers[id(model)], batch, advantages, train_cfg, temperature=1.0)

    def forward_backward(masked: bool):
        def run():
            inputs = model_inputs(batch, "cpu")
            if masked:
                inputs["attention_mask"] = batch.attention
            fused.zero_grad(set_to_none=True)
            fused(**inputs).logits.float().square().mean().backward()
        return run

    median = in_turns({
        "policy_fused": update(fused), "policy_peft": update(unfused),
        "pass_unmasked": forward_backward(False), "pass_masked": forward_backward(True),
        "critic_fit": lambda: critic.fit(batch, targets, torch.ones(len(targets)), 1, 0.2, 256,
                                         torch.Generator().manual_seed(0)),
        "critic_score": lambda: critic.score(batch),
    }, reps)
    return {"policy_update_s": median["policy_fused"], "policy_update_peft_s": median["policy_peft"],
            "fused_lora_speedup": median["policy_peft"] / median["policy_fused"],
            "pass_unmasked_s": median["pass_unmasked"], "pass_masked_s": median["pass_masked"],
            "unmasked_pass_speedup": median["pass_masked"] / median["pass_unmasked"],
            "critic_fit_s": median["critic_fit"], "critic_score_s": median["critic_score"],
            "rows": batch.input_ids.shape[0], "tokens": batch.num_tokens, "reps": reps}
