"""GPU memory of a run, per GPU and per phase, from its config and the model's config alone: the
model is built on PyTorch's meta device (no weights are read), so the plan works offline for
every shipped preset (tempo_bench/assets/model_configs holds the paper models' configs).

What each phase holds (GiB = 2**30 bytes; estimates, stated so they can be checked):

- resident (every phase): the policy's base weights; the critic's backbone (a second copy of the
  policy's base for a self-critic trained in full or with critic.share_base false; none for a
  LoRA self-critic sharing the policy's base, tempo_bench.critic.shared_base); LoRA weights, gradients and AdamW
  state in float32 (16 bytes per trainable parameter), or for a critic trained in full its
  weights, gradients and float32 AdamW state. With model.device=auto over several GPUs the
  weights and adapters are spread evenly (activations and logits are counted whole on each GPU,
  an overestimate).
- rollout: vLLM takes ``gpu_memory_utilization`` of the planned card (the same figure every phase
  is checked against; the engine is started with the fraction of the physical card that gives it
  exactly that share) for its weights and KV cache while the trainer's memory stays resident; the
  engine's weights plus the KV cache of one ``RunConfig.vllm_context_len()`` sequence must fit inside that
  share. The hf backend
  instead holds the KV cache of every sequence of a step; its merged sampling copy of the weights
  (rollout.merge_lora, a LoRA policy) lives from the first rollout to the end of the run, so every
  phase counts it.
- training: per micro-batch of ``micro_batch_rows`` full-length sequences, the activations kept
  for the backward pass (with gradient checkpointing, each layer's input plus one layer's
  recomputed activations; without, every layer's) and the logits over the vocabulary: the policy
  computes them a chunk of at most ``CHUNK_ENTRIES`` at a time (policy.batch.response_logprobs),
  in the model's dtype, as float32, their log-softmax, its exponential for the entropy and the
  gradient, in the forward pass and again in the backward; vLLM asleep frees its share, awake
  keeps it.
  The critic's training pass is the same with its own micro-batch and no vocabulary logits.
"""

from __future__ import annotations

import os

from dataclasses import dataclass, field

from tempo_bench.core.algos import CHUNK_ENTRIES
from tempo_bench.core.assets import ASSETS
from tempo_bench.core.errors import ConfigError
from tempo_bench.core.processes import launched_world_size
from tempo_bench.methods.catalog import method_class
from tempo_bench.policy.model import resolve_device, resolve_model_path

GiB = 2**30
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
SHIPPED_CONFIGS = ASSETS / "model_configs"
ADAM_BYTES = 16  # float32 weight, gradient and two AdamW moments per trainable parameter


class PlanError(ConfigError):
    """The run does not fit the GPU its config names."""


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of a model, counted on the meta device."""

    params: int
    layers: int
    hidden: int
    intermediate: int
    vocab: int
    kv_dim: int  # key/value heads x head dim
    q_dim: int
    lora_fan: dict[str, int] = field(default_factory=dict)  # module name -> sum over layers of in + out

    def kv_bytes_per_token(self, width: int) -> int:
        """Keys and values of one token over every layer, at ``width`` bytes per number."""
        return 2 * self.layers * self.kv_dim * width

    def lora_params(self, r: int, targets: list[str]) -> int:
        return r * sum(fan for name, fan in self.lora_fan.items() if name in targets)


def model_config(path: str):
    """The transformers config of ``path``: a local folder, the hub cache, or a shipped copy."""
    from transformers import AutoConfig

    local = resolve_model_path(path)
    shipped = SHIPPED_CONFIGS / local.replace("/", "--")
    try:
        return AutoConfig.from_pretrained(local, local_files_only=True)
    except (OSError, ValueError):
        if not (shipped / "config.json").is_file():
            raise PlanError(f"no config.json for {path!r} here (not a local folder, not in the hub cache, not "
                            f"shipped in {SHIPPED_CONFIGS}): the memory plan needs the model's config") from None
    try:
        return AutoConfig.from_pretrained(shipped)
    except (OSError, ValueError) as err:  # e.g. a model type newer than the installed transformers
        import transformers

        raise PlanError(f"transformers {transformers.__version__} cannot read the shipped config of {path!r} "
                        f"({str(err).splitlines()[0][:200]})") from None


def model_shape(path: str) -> ModelShape:
    import torch
    from transformers import AutoModelForCausalLM

    config = model_config(path)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    fan: dict[str, int] = {}
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and ".layers." in name:
            key = name.rsplit(".", 1)[-1]
            fan[key] = fan.get(key, 0) + module.in_features + module.out_features
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return ModelShape(params=sum(p.numel() for p in model.parameters()), layers=config.num_hidden_layers,
                      hidden=config.hidden_size, intermediate=config.intermediate_size, vocab=config.vocab_size,
                      kv_dim=kv_heads * head_dim, q_dim=config.num_attention_heads * head_dim, lora_fan=fan)


@dataclass
class Phase:
    name: str
    items: dict[str, float]  # what -> GiB per GPU

    @property
    def total(self) -> float:
        return sum(self.items.values())


@dataclass
class MemoryPlan:
    card_gb: float
    gpus: int
    phases: list[Phase]
    notes: list[str]

    @property
    def peak(self) -> Phase:
        return max(self.phases, key=lambda p: p.total)

    def fits(self) -> bool:
        return not self.problems()  # plan_memory notes every phase over the card, and vLLM's share

    def problems(self) -> list[str]:
        return [n for n in self.notes if n.startswith("does not fit")]

    def lines(self) -> list[str]:
        out = [f"memory plan: {self.gpus} GPU(s) of {self.card_gb:.0f} GiB; per GPU:"]
        for phase in self.phases:
            parts = ", ".join(f"{k} {v:.1f}" for k, v in phase.items.items() if v >= 0.05)
            out.append(f"  {phase.name:<16} {phase.total:6.1f} GiB  ({parts})")
        out += [f"  {note}" for note in self.notes]
        verdict = "fits" if self.fits() else "DOES NOT FIT"
        out.append(f"  peak {self.peak.total:.1f} GiB in {self.peak.name}: {verdict} in {self.card_gb:.0f} GiB")
        return out


def plan_memory(config, cuda_gpus: int | None = None, card_gb: float | None = None,
                ranks: int | None = None, host_gb: float | None = None) -> MemoryPlan:
    """The plan of ``config`` (a RunConfig). ``cuda_gpus`` / ``card_gb``: what is visible here
    (default: asked of torch.cuda). The card checked against: model.gpu_memory_gb (the card the
    config is sized for, default 80 GiB), or the visible card where that is smaller. ``ranks``:
    the data-parallel ranks sharing a step's rollouts, one GPU each (default: torchrun's
    WORLD_SIZE, else 1). ``host_gb``: this machine's memory, which train.offload's shards must fit
    (default: asked of the OS)."""
    ranks = ranks or launched_world_size()
    visible, physical = _visible_card() if cuda_gpus is None else (cuda_gpus, card_gb)
    card = config.model.card_gb(physical)
    vllm = config.rollout.vllm if config.rollout.backend == "vllm" else None
    # layers spread over the visible GPUs, except in a data-parallel run (a replica per rank)
    spread = config.model.device == "auto" and max(visible, vllm.tensor_parallel_size if vllm else 1) > 1 \
        and ranks == 1
    gpus = max(visible, vllm.tensor_parallel_size if vllm else 1) if spread else 1
    width = DTYPE_BYTES[config.model.dtype]
    policy = model_shape(config.model.path)
    seq = config.model.max_prompt_tokens + config.rollout.max_new_tokens
    notes: list[str] = []

    lora_bytes = ADAM_BYTES / GiB / gpus  # an adapter's weights live beside their layer's
    resident = {"policy weights": policy.params * width / GiB / gpus}
    if config.rollout.backend == "hf" and config.rollout.merge_lora and config.train.mode == "lora":
        resident["merged sampling copy"] = policy.params * width / GiB  # kept from the first rollout on
    resident.update(_kept_graph_cache(config, policy, seq, width, ranks, notes))
    if config.train.mode == "lora":
        resident["policy LoRA+AdamW"] = policy.lora_params(config.lora.r, config.lora.target_modules) * lora_bytes
    else:
        resident.update(_full_policy(config, policy, width, gpus, ranks))
    critic = None
    if method_class(config.method).uses_critic:
        self_critic = config.critic.path in (None, config.model.path)
        critic = policy if self_critic else model_shape(config.critic.path)
        resident.update(_critic(config, critic, self_critic, width, gpus, ranks, lora_bytes, notes))
    _offload(config, policy, resident, ranks, width, notes, host_gb)

    phases = [Phase("rollout", {**resident, **_rollout(config, policy, seq, width, card, notes, ranks)})]
    asleep = {} if vllm is None or vllm.sleep else {"vLLM (awake)": vllm.gpu_memory_utilization * card}
    # a micro-batch of None is a whole minibatch: the step's trained rows over train.minibatches
    rows = config.train.micro_batch_rows or -(-config.step_shape().trained_rows // config.train.minibatches)
    # micro_batch_tokens packs rows up to it; a row longer than it goes alone
    tokens = max(config.train.micro_batch_tokens, seq) if config.train.micro_batch_tokens else rows * seq
    phases.append(Phase("policy training", {**resident, **asleep,
                                            **_activations(policy, tokens, width, config, logits=True,
                                                           rows=max(1, tokens // seq))}))
    if critic is not None:
        rows = config.critic.micro_batch_rows or config.critic.minibatch_rows
        phases.append(Phase("critic training", {**resident, **asleep,
                                                **_activations(critic, rows * seq, width, config, logits=False)}))
    for phase in phases:
        if phase.total > card:
            notes.append(f"does not fit: {phase.name} needs {phase.total:.1f} GiB per GPU of {card:.0f} GiB")
    return MemoryPlan(card, gpus, phases, notes)


def _critic(config, critic: ModelShape, self_critic: bool, width: int, gpus: int, ranks: int, lora_bytes: float,
            notes: list[str]) -> dict[str, float]:
    """The critic's resident items, GiB per GPU: its backbone (none where it shares the policy's
    base), its trainable state, and with a sharded policy its own shards (Critic.sharded)."""
    items = {}
    copy_gb = critic.params * width / GiB / gpus
    # a sharded policy's critic is sharded too (Critic.sharded): 1/ranks of it, a root and 2 layers whole
    shards = ranks if config.train.sharding == "fsdp" and ranks > 1 else 1
    if not config.critic_shares_base():
        items["critic weights"] = copy_gb / shards
    if config.critic.lora:
        items["critic LoRA+AdamW"] = critic.lora_params(config.lora.r, config.lora.target_modules) * lora_bytes / shards
    else:
        items["critic grads+AdamW"] = critic.params * (width + 8) / GiB / gpus / shards
    if shards > 1:
        items["critic gathered root + 2 layers"] = _gathered_root_and_layers(critic, width)
    if config.critic_shares_base():
        notes.append(f"the critic is a second LoRA adapter on the policy's base (critic.share_base): "
                     f"no second copy of the base ({copy_gb:.1f} GiB saved)")
    elif self_critic:
        sharded = f", sharded over {shards} ranks: {copy_gb / shards:.1f} GiB each" if shards > 1 else ""
        notes.append(f"the self-critic loads a second copy of the policy's base ({copy_gb:.1f} GiB{sharded})"
                     + ("; critic.lora with critic.share_base would save it" if not config.critic.lora else ""))
    return items


def _full_policy(config, policy, width: int, gpus: int, ranks: int) -> dict[str, float]:
    """Full fine-tuning: float32 master weights (RunConfig.policy_model), their float32 gradients
    and AdamW's two float32 moments; with FSDP each rank holds 1/ranks of them, plus what is whole
    in the compute dtype during a pass (the root's embeddings and head, never resharded, and two
    decoder layers: the one computing and the one prefetched) and, with hf rollouts, the plain copy
    it samples from (tempo_bench.policy.sharding; vLLM's engine holds its own inside its share);
    offload moves the shards to host memory (_offload)."""
    master, state = policy.params * 4 / GiB / gpus, policy.params * 12 / GiB / gpus
    if config.train.sharding != "fsdp" or ranks == 1:
        return {"policy weights": master, "policy grads+AdamW": state}
    shards = {"policy weights": master / ranks, "policy grads+AdamW": state / ranks,
              "FSDP gathered root + 2 layers": _gathered_root_and_layers(policy, width),
              # the weights reach the sampler one parameter at a time, each gathered whole in float32
              "one gathered float32 parameter": policy.vocab * policy.hidden * 4 / GiB}
    if config.rollout.backend == "hf":  # vLLM's engine holds its own copy, inside its share
        shards["sampling copy (gathered)"] = policy.params * width / GiB
    return shards


OFFLOADED = ("policy weights", "policy grads+AdamW", "critic weights", "critic LoRA+AdamW", "critic grads+AdamW")


def _offload(config, policy: ModelShape, resident: dict[str, float], ranks: int, width: int, notes: list[str],
             host_gb: float | None) -> None:
    """train.offload on a sharded run: the policy's and the critic's shards (``resident``'s
    OFFLOADED items) live in host memory between passes, not on the GPU; so does a sleeping vLLM
    engine's part of the weights. The node's ranks' total must fit this machine's memory."""
    if not (config.train.offload and config.train.sharding == "fsdp" and ranks > 1):
        return
    per_rank = sum(resident.get(name, 0.0) for name in OFFLOADED)
    resident.update({name: 0.0 for name in OFFLOADED if name in resident})
    vllm = config.rollout.vllm if config.rollout.backend == "vllm" else None
    # a sleeping engine (level 1) keeps its part of the weights in host memory beside the shards
    asleep = policy.params * width / GiB / vllm.tensor_parallel_size if vllm is not None and vllm.sleep else 0.0
    node = (per_rank + asleep) * int(os.environ.get("LOCAL_WORLD_SIZE", ranks))  # this machine's ranks'
    host = host_gb if host_gb is not None else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GiB
    notes.append(f"train.offload: {per_rank:.1f} GiB of shards per rank in host memory, not on the GPU"
                 + (f", and {asleep:.1f} GiB of vLLM's sleeping weights" if asleep else ""))
    if node > host:
        notes.append(f"does not fit: train.offload keeps {node:.1f} GiB of shards (and sleeping vLLM weights) in "
                     f"this machine's memory, which has {host:.1f} GiB; use more machines or leave train.offload off")


def _gathered_root_and_layers(shape: ModelShape, width: int) -> float:
    """What an FSDP-sharded model holds whole during a pass, GiB: the root (embeddings and head,
    never resharded; untied, the larger case) and two decoder layers (the one computing and the
    one prefetched)."""
    weights = shape.params * width / GiB
    root = 2 * shape.vocab * shape.hidden * width / GiB
    return root + 2 * (weights - root) / shape.layers


def _rollout(config, policy: ModelShape, seq: int, width: int, card: float, notes: list[str],
             ranks: int = 1) -> dict[str, float]:
    kv_per_token = policy.kv_bytes_per_token(width)
    if config.rollout.backend == "vllm":
        v = config.rollout.vllm
        share = v.gpu_memory_utilization * card
        context = config.vllm_context_len()
        need = (policy.params * width + kv_per_token * context) / v.tensor_parallel_size / GiB
        if need > share:
            notes.append(f"does not fit: vLLM's share ({v.gpu_memory_utilization:.2f} x {card:.0f} = {share:.1f} GiB) "
                         f"is below its weights plus one {context}-token sequence's KV cache ({need:.1f} GiB): raise "
                         "rollout.vllm.gpu_memory_utilization or tensor_parallel_size")
        return {"vLLM share": share}
    sampled, rows = config.step_shape().sampled_rows, _sampled_rows_per_rank(config, ranks)
    if ranks > 1:
        notes.append(f"each of {ranks} ranks samples {rows} of the step's {sampled} sequences")
    if config.rollout.decode == "graphs":  # its cache is kept between rollouts: counted in every phase
        return {}
    if config.rollout.decode == "static":  # static_decode preallocates for the bucket of rows
        from tempo_bench.rollout.static_decode import bucket

        notes.append(f"rollout.decode=static: a KV cache for {bucket(rows)} rows (the bucket of {rows})")
        rows = bucket(rows)
    return {"KV cache": kv_per_token * seq * rows / GiB}


def _sampled_rows_per_rank(config, ranks: int) -> int:
    """The sequences each rank samples in a step (its share of the step's)."""
    return -(-config.step_shape().sampled_rows // ranks)


def _kept_graph_cache(config, policy: ModelShape, seq: int, width: int, ranks: int, notes: list[str]) -> dict[str, float]:
    """rollout.decode=graphs keeps one static KV cache between rollouts (its captured graphs read
    its addresses): the bucket of a rank's rows at the step's length rounded up (static_decode)."""
    if config.rollout.backend != "hf" or config.rollout.decode != "graphs":
        return {}
    from tempo_bench.rollout.static_decode import bucket, graph_capacity

    rows, length = bucket(_sampled_rows_per_rank(config, ranks)), graph_capacity(seq)
    notes.append(f"rollout.decode=graphs: a KV cache for {rows} rows x {length} positions kept in every phase")
    return {"kept KV cache (graphs)": policy.kv_bytes_per_token(width) * length * rows / GiB}


def _activations(shape: ModelShape, tokens: int, width: int, config, logits: bool, rows: int = 1) -> dict[str, float]:
    """Activations of one micro-batch of ``tokens`` tokens in ``rows`` rows kept for the backward
    pass, and (``logits``) the policy's vocabulary-sized temporaries: one chunk of the lean pass
    (core.algos: ``CHUNK_ENTRIES`` logits, or one position of every row where that is more), and
    for a sharded policy, which takes the logits path, the whole micro-batch's logits besides."""
    per_layer = tokens * (4 * shape.hidden + shape.q_dim + 2 * shape.kv_dim + 4 * shape.intermediate) * width
    if config.model.gradient_checkpointing:
        kept = shape.layers * tokens * shape.hidden * width + per_layer
    else:
        kept = shape.layers * per_layer
    items = {"activations": kept / GiB}
    if logits:  # one chunk: model dtype, float32 copy, log-softmax, exp, gradient (response_logprobs)
        chunk = min(tokens * shape.vocab, max(CHUNK_ENTRIES, rows * shape.vocab))
        whole = tokens * shape.vocab * width if config.train.sharding == "fsdp" else 0
        items["logits"] = (chunk * (width + 16) + whole) / GiB
    return items


def _visible_card() -> tuple[int, float | None]:
    import torch

    if not torch.cuda.is_available():
        return 0, None
    return torch.cuda.device_count(), torch.cuda.get_device_properties(0).total_memory / GiB


def on_gpu(config, described: bool = False) -> bool:
    """Whether the run's model goes to a CUDA GPU (a plan is checked): device cuda, or auto with a
    GPU visible. ``described`` (--dry-run): also a config that names the card it is sized for, or
    rollouts on vLLM, on a machine without one (vLLM's CPU build runs with model.device cpu or auto)."""
    device = config.model.device
    if device.startswith("cuda"):
        return True
    if device != "auto":  # cpu, mps
        return False
    sized = config.model.gpu_memory_gb is not None or config.rollout.backend == "vllm"
    return resolve_device("auto") == "cuda" or (described and sized)


def check_plan(config, what: str = "") -> MemoryPlan | None:
    """The plan of a run on a GPU, raising PlanError (the phase, the figure, the setting to change;
    ``what`` says whose plan) when it does not fit; None for a run on the CPU."""
    if not on_gpu(config):
        return None
    plan = plan_memory(config)
    if not plan.fits():
        raise PlanError(what + "\n".join([*plan.lines(), "lower train.micro_batch_rows / critic.micro_batch_rows or "
                                   "rollout.max_new_tokens, lower rollout.vllm.gpu_memory_utilization, or use a "
                                   "larger card (model.gpu_memory_gb)"]))
    return plan

