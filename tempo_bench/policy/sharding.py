"""Full fine-tuning of the policy (``train.mode: full``) and its parameters sharded over ranks with
torch's FSDP2 (``train.sharding: fsdp`` under torchrun), the layout verl, TRL/accelerate and
torchtitan use for models beyond one GPU.

- Sharding: ``fully_shard`` on every decoder layer, then on the whole model (embeddings, final
  norm and head), parameters in the model's dtype, gradients reduced in float32; optionally held
  in host memory between uses (``train.offload``). Every forward and backward pass of the sharded
  model is a collective, so every rank runs each one (tempo_bench.policy.batch pads a rank with
  fewer micro-batches with zero-weight ones).
- Gradients: the reduce-scatter *sums* over ranks (divide factor 1), as the replicated layout's
  ``Ranks.sum_gradients`` does: each rank's loss is already weighted by its share of the global
  minibatch.
- Sampling: ranks sample different questions for different numbers of tokens, which a sharded
  model cannot do (its collectives would not line up); each rank samples from a plain copy whose
  weights are gathered from the shards one parameter at a time after every update
  (``full_weights``), the role vLLM's per-rank engine plays in verl and TRL.
- The critic of a sharded run is sharded the same way (``Critic.sharded``), its gradients averaged:
  every rank fits the same rows.
- Checkpoints: torch.distributed.checkpoint, keyed by parameter name, so a run resumes on another
  number of ranks (2 -> 1 is tested); on one process the same format is written without a process
  group.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import torch


def decoder_layers(model) -> list[torch.nn.Module]:
    """The transformer blocks of a causal LM or a value model, wrapped by peft or not (the units
    FSDP shards and gathers one at a time): the first ``layers`` module list."""
    for name, module in model.named_modules():
        if name.rpartition(".")[2] == "layers" and isinstance(module, torch.nn.ModuleList):
            return list(module)
    raise ValueError(f"{type(model).__name__} has no .layers: train.sharding=fsdp does not know its blocks")


def shard(model, model_dtype: torch.dtype, offload: bool = False, divide: float = 1.0):
    """``model`` with every decoder layer and the whole sharded over the process group (in place).
    Gradients are reduced as a sum divided by ``divide``: 1 for the policy (module docstring), the
    world size for a critic every rank fits on the same rows (the mean of equal gradients)."""
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule, MixedPrecisionPolicy, fully_shard

    if not hasattr(FSDPModule, "set_force_sum_reduction_for_comms"):
        from tempo_bench.core.errors import ConfigError

        raise ConfigError("train.sharding=fsdp needs a torch whose FSDP2 can sum gradients over ranks "
                          f"(FSDPModule.set_force_sum_reduction_for_comms); this is torch {torch.__version__}")

    options = {"mp_policy": MixedPrecisionPolicy(param_dtype=model_dtype, reduce_dtype=torch.float32)}
    if offload:
        options["offload_policy"] = CPUOffloadPolicy()
    for layer in decoder_layers(model):
        fully_shard(layer, **options)
    fully_shard(model, **options)
    for module in model.modules():
        if hasattr(module, "set_gradient_divide_factor"):
            module.set_gradient_divide_factor(divide)  # a sum over ranks, divided by ``divide``
            module.set_force_sum_reduction_for_comms(True)  # a plain SUM (gloo has no pre-multiplied sum)
    return model


def shard_from_rank0(build, main: bool, model_dtype: torch.dtype, offload: bool = False, divide: float = 1.0):
    """The model ``build(empty)`` makes, sharded, without a whole copy on any GPU or in any host
    memory but rank 0's (``main``). Every rank builds it without weights (``empty``: parameters on
    the meta device) and shards it; rank 0 alone also builds it whole, in host memory, and its
    weights are broadcast into every rank's shards (torch.distributed.checkpoint's
    ``broadcast_from_rank0``). Buffers the checkpoint does not hold (rotary tables) are computed by
    the constructor on every rank and put back on the compute device."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    from tempo_bench.policy.model import compute_device

    model = build(True)
    computed = {name: buffer.detach().clone() for name, _, _, buffer in _buffers(model, non_persistent=True)}
    whole = build(False).state_dict() if main else {}
    shard(model, model_dtype, offload, divide)
    device = compute_device(model)
    model.to_empty(device="cpu" if offload else device)  # offloaded shards live in host memory
    set_model_state_dict(model, whole, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True))
    del whole
    for name, owner, leaf, buffer in _buffers(model):  # on the compute device, offloaded shards or not
        owner._buffers[leaf] = computed.get(name, buffer).to(device)
    return model


def _buffers(model, non_persistent: bool = False):
    """(name, owner, leaf, buffer) of every buffer of ``model``, each owner's (shared ones too), or
    only those a state dict leaves out."""
    for owner_name, owner in model.named_modules(remove_duplicate=False):
        for leaf, buffer in owner._buffers.items():
            if buffer is not None and (not non_persistent or leaf in owner._non_persistent_buffers_set):
                yield f"{owner_name}.{leaf}" if owner_name else leaf, owner, leaf, buffer


def is_sharded(model) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def full_weights(model) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, whole tensor) of every parameter, gathered from the shards one at a time (a collective:
    every rank iterates the same parameters in the same order); a plain model's as they are."""
    for name, param in model.named_parameters():
        yield name, (param.full_tensor() if hasattr(param, "full_tensor") else param).detach()


def sampling_copy(model, dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A plain, frozen model of ``model``'s architecture in ``dtype`` (default: its shards'), on
    the device of its local shards, to be filled with full_weights; built on that device (no
    host-memory copy first) and outside the run's random stream (its initial values are
    overwritten); its buffers (rotary tables) are computed by the constructor."""
    from transformers import AutoModelForCausalLM

    first = next(model.parameters())
    local = first.to_local() if hasattr(first, "to_local") else first
    with torch.random.fork_rng(devices=[]), torch.device(local.device):
        copy = AutoModelForCausalLM.from_config(model.config)
    return copy.to(dtype or local.dtype).requires_grad_(False).eval()


def grad_norm_value(norm) -> float:
    """clip_grad_norm_'s result as a float (a DTensor for sharded gradients)."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def save_full(model, optimizer, folder: Path) -> None:
    """Model and optimiser state as a distributed checkpoint (every rank of a sharded model calls it)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(folder))


def restore_full(model, optimizer, folder: Path) -> None:
    """Load save_full's checkpoint into ``model`` and ``optimizer``, resharded to this run's ranks."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(folder))
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])


def export_full(model, folder: Path, main: bool) -> Path:
    """The trained policy as a standard checkpoint folder (``save_pretrained``, loadable by vLLM and
    lm-eval): the weights are gathered on every rank, written by rank 0."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder, state_dict=state)
    return folder
