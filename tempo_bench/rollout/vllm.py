"""Rollouts with vLLM on a GPU (``pip install 'tempo-bench[vllm]'``; imported only when
``rollout.backend=vllm``).

The engine runs in this process next to the trainer and serves the current policy in one of two
ways (``rollout.vllm.sync``):

- ``lora`` (default): after each policy update the adapter is saved and served through a new
  ``LoRARequest`` (vLLM caches adapters by id, so every version gets a fresh id). No engine
  internals are touched; works with tensor parallelism.
- ``merged``: the LoRA-targeted weights W + scale * B A are computed without touching the
  training model and loaded into the engine's model in place (``load_weights``).

With ``rollout.vllm.sleep`` the engine sleeps (weights to CPU memory, KV cache freed) whenever it
is not generating, so training and rollouts share one GPU. Log-probabilities are those of the
sampling distribution (``logprobs_mode="processed_logprobs"``, vLLM >= 0.10.2), as in the hf
backend.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from tempo_bench.policy.model import merged_lora_weights, resolve_model_path, save_adapter
from tempo_bench.rollout.base import Generation, RolloutBackend, SamplingParams

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's kernels are built for


def _import_vllm():
    try:
        import vllm
    except ImportError as err:
        raise ImportError(
            f"rollout.backend=vllm needs vLLM ({err}); install it on a GPU machine with "
            "pip install 'tempo-bench[vllm]', or use rollout.backend=hf"
        ) from None
    return vllm


class VLLMBackend(RolloutBackend):
    def __init__(self, policy, tokenizer, llm, cfg, adapter_root: Path):
        self.policy, self.tokenizer, self.llm, self.cfg = policy, tokenizer, llm, cfg
        self.adapter_root = adapter_root
        self.version = 0
        self.lora_request = None
        self.asleep = False
        self.sync_weights()  # the starting policy (its LoRA is zero: equal to the base)

    @classmethod
    def create(cls, config, policy, tokenizer, out_dir) -> "VLLMBackend":
        cfg = config.rollout.vllm
        if not torch.cuda.is_available():
            raise RuntimeError("rollout.backend=vllm needs a CUDA GPU; use rollout.backend=hf on CPU")
        # the engine in this process: merged weights can then be written into its model directly
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        if cfg.sync == "merged" and cfg.tensor_parallel_size > 1:
            os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")  # load_weights via RPC
        vllm = _import_vllm()

        path = resolve_model_path(config.model.path)
        kwargs = dict(
            model=path, tokenizer=path, dtype=config.model.dtype, seed=config.seed,
            tensor_parallel_size=cfg.tensor_parallel_size, gpu_memory_utilization=cfg.gpu_memory_utilization,
            enable_sleep_mode=cfg.sleep, enforce_eager=cfg.enforce_eager,
            logprobs_mode="processed_logprobs",
        )
        if cfg.max_model_len is not None:
            kwargs["max_model_len"] = cfg.max_model_len
        if cfg.sync == "lora":
            rank = next((r for r in LORA_RANKS if r >= config.lora.r), None)
            if rank is None:
                raise ValueError(f"lora.r={config.lora.r} exceeds vLLM's largest LoRA rank {LORA_RANKS[-1]}")
            kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
        llm = vllm.LLM(**kwargs)
        return cls(policy, tokenizer, llm, cfg, Path(out_dir) / "vllm_adapters")

    # -- memory sharing with the trainer ---------------------------------------------------------
    def _wake(self) -> None:
        if self.asleep:
            self.llm.wake_up()
            self.asleep = False

    def _sleep(self) -> None:
        if self.cfg.sleep and not self.asleep:
            self.llm.sleep(level=1)  # level 1 keeps the weights in CPU memory: nothing to reload
            self.asleep = True

    # -- the interface ------------------------------------------------------------------------
    def generate(self, prompts: list[str], sampling: SamplingParams) -> Generation:
        vllm = _import_vllm()
        # one seed per call drawn from torch's generator: the loop's per-step seeding holds
        seed = int(torch.randint(0, 2**31 - 1, (1,)))
        if sampling.greedy:
            params = vllm.SamplingParams(n=1, temperature=0.0, max_tokens=sampling.max_new_tokens, logprobs=0)
        else:
            params = vllm.SamplingParams(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p,
                                         top_k=0, max_tokens=sampling.max_new_tokens, logprobs=0, seed=seed)
        prompt_ids = [self.tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        self._wake()
        try:
            outputs = self.llm.generate([{"prompt_token_ids": ids} for ids in prompt_ids], params,
                                        lora_request=self.lora_request, use_tqdm=False)
        finally:
            self._sleep()
        n = 1 if sampling.greedy else sampling.n
        out = Generation(n, prompt_ids, [], [], [], [])
        for request in outputs:  # in prompt order; each holds its n samples
            for sample in request.outputs:
                ids = list(sample.token_ids)
                out.token_ids.append(ids)
                out.logprobs.append([step[t].logprob for step, t in zip(sample.logprobs or [], ids)])
                out.texts.append(self.tokenizer.decode(ids, skip_special_tokens=True))
                out.finished.append(sample.finish_reason == "stop")
        return out

    def sync_weights(self) -> None:
        if self.cfg.sync == "lora":
            self._serve_adapter()
        else:
            weights = merged_lora_weights(self.policy)
            self._wake()
            try:
                self.llm.apply_model(lambda model: model.load_weights(weights))
                self.llm.reset_prefix_cache()  # cached KV blocks were computed with the old weights
            finally:
                self._sleep()

    def _serve_adapter(self) -> None:
        from vllm.lora.request import LoRARequest

        self.version += 1
        path = self.adapter_root / f"v{self.version:06d}"
        save_adapter(self.policy, path)
        previous, self.lora_request = self.lora_request, LoRARequest(f"policy-{self.version}", self.version, str(path))
        if previous is not None:  # vLLM has its own copy once loaded; the next one is already on disk
            shutil.rmtree(previous.lora_path, ignore_errors=True)

    def close(self) -> None:
        shutil.rmtree(self.adapter_root, ignore_errors=True)
        self.llm = None  # frees the engine's GPU memory once collected
        torch.cuda.empty_cache()
