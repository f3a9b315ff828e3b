"""Rollouts with transformers ``generate`` on the training model itself (CPU or GPU).

All prompts x n samples go through as few ``generate`` calls as ``max_batch_rows`` allows. The
backend holds the very model being trained (base + LoRA), so there are no weights to sync.
"""

from __future__ import annotations

import torch

from tempo_bench.rollout.base import Generation, RolloutBackend, SamplingParams


class HFBackend(RolloutBackend):
    def __init__(self, model, tokenizer, max_batch_rows: int = 1024):
        self.model = model
        self.tokenizer = tokenizer
        self.max_batch_rows = max_batch_rows

    @torch.no_grad()
    def generate(self, prompts: list[str], sampling: SamplingParams) -> Generation:
        tok = self.tokenizer
        prompt_ids = [tok(p, add_special_tokens=False)["input_ids"] for p in prompts]
        per_call = max(1, self.max_batch_rows // sampling.n)
        out = Generation(sampling.n, prompt_ids, [], [], [], [])
        was_training = self.model.training
        self.model.eval()
        try:
            for start in range(0, len(prompts), per_call):
                self._generate_chunk(prompt_ids[start : start + per_call], sampling, out)
        finally:
            self.model.train(was_training)
        return out

    def _generate_chunk(self, prompt_ids, sampling: SamplingParams, out: Generation) -> None:
        tok = self.tokenizer
        device = next(self.model.parameters()).device
        width = max(len(p) for p in prompt_ids)
        # left padding: every prompt ends where generation starts
        input_ids = torch.full((len(prompt_ids), width), tok.pad_token_id, dtype=torch.long)
        attention = torch.zeros_like(input_ids)
        for row, ids in enumerate(prompt_ids):
            input_ids[row, width - len(ids) :] = torch.tensor(ids)
            attention[row, width - len(ids) :] = 1
        kwargs = dict(
            max_new_tokens=sampling.max_new_tokens,
            num_return_sequences=sampling.n,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
            return_dict_in_generate=True,
            output_logits=True,
        )
        if sampling.greedy:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:
            kwargs.update(do_sample=True, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0)
        result = self.model.generate(
            input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs
        )
        new_tokens = result.sequences[:, width:].cpu()  # [rows, steps]
        temperature = 1.0 if sampling.greedy else sampling.temperature
        logits = torch.stack(result.logits, dim=1).float().cpu() / temperature  # [rows, steps, V]
        logprobs = torch.log_softmax(logits, -1).gather(-1, new_tokens.unsqueeze(-1)).squeeze(-1)
        for row in range(new_tokens.shape[0]):
            ids = new_tokens[row].tolist()
            finished = tok.eos_token_id in ids
            length = ids.index(tok.eos_token_id) + 1 if finished else len(ids)
            out.token_ids.append(ids[:length])
            out.logprobs.append(logprobs[row, :length].tolist())
            out.texts.append(tok.decode(ids[:length], skip_special_tokens=True))
            out.finished.append(finished)
