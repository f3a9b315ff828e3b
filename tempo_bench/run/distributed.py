"""Data-parallel runs on torch.distributed: ``torchrun --nproc-per-node N $(which tempo-bench) run ...``.

Each rank samples and grades its contiguous share of a step's questions, with per-question seeds
(``rollout.seeding: question``), so the samples do not depend on the number of ranks; the shares
are then gathered, so every rank holds the whole step's batch and computes the same rewards,
advantages and metrics (nothing to reduce: a 2-rank run logs what a 1-rank run logs). The policy
update is split again: each rank back-propagates its part of every minibatch, each row weighed
by its share of the *global* minibatch's tokens (or rows), and the LoRA gradients are summed over
ranks once per optimiser step (what DDP does at the end of gradient accumulation; DDP's own hooks
would reduce at every micro-batch and need the whole model wrapped). Clipping and the optimiser
step then see the same gradient on every rank, so the replicas stay equal without broadcasting
weights. Only rank 0 evaluates (with the ranks its vLLM engine spans), logs to MLflow and writes
checkpoints; every rank reads a
checkpoint on ``--resume``. The critic's E-step, fits and probe run whole on every rank (not
split); with a replicated policy the scores rewards are made of come from rank 0's critic
(``Ranks.from_main``), as do the label-free methods' confidence scores; with a sharded policy
(``train.sharding=fsdp``) the critic is sharded too, and every rank scores and fits rank 0's rows
(``Critic.sharded``). With ``rollout.backend=vllm`` every rank runs an engine of its own that serves
the rank's share of the rollouts (tempo_bench.rollout.vllm), or with
``rollout.vllm.tensor_parallel_size`` k > 1 every group of k consecutive ranks runs one engine
spanning their GPUs, which samples the group's shares together. ``torchrun`` stops every rank when one dies; a
collective that waits longer than ``TIMEOUT_S`` fails instead of hanging.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch

from tempo_bench.core.errors import ConfigError
from tempo_bench.core.processes import launched_world_size

# a collective no peer joins for this long raises (a stuck rank; torchrun itself stops every rank
# when one dies). Long, because rank 0 (with its engine's ranks) evaluates while the others wait at the next step.
TIMEOUT_S = int(os.environ.get("TEMPO_BENCH_DIST_TIMEOUT_S", 3 * 3600))


@dataclass(frozen=True)
class Ranks:
    """This process's place in a data-parallel run: rank r of ``world`` (1: a plain run)."""

    rank: int = 0
    world: int = 1
    sharded: bool = False  # the policy is FSDP-sharded (tempo_bench.policy.sharding): its passes are collectives

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1

    def split(self, rows: torch.Tensor) -> torch.Tensor:
        """This rank's part of ``rows`` (any partition is right: every rank holds the whole batch)."""
        return rows.tensor_split(self.world)[self.rank] if self.distributed else rows

    def from_main(self, compute):
        """``compute()`` on rank 0, its result on every rank (one source for values that replicas
        could compute a hair differently, e.g. a critic's scores)."""
        if not self.distributed:
            return compute()
        if self.sharded:  # the sharded policy's forward passes need every rank
            return self.broadcast(compute())
        return self.broadcast(compute() if self.main else None)

    def align(self, parts: list) -> list:
        """A sharded policy: this rank's micro-batches padded with None to the most any rank has,
        so that every rank runs the same number of (collective) passes; else ``parts``."""
        if not self.sharded:
            return parts
        most = max(self.gather(len(parts)))
        return parts + [None] * (most - len(parts))

    def any(self, flag: bool) -> bool:
        """Whether ``flag`` holds on some rank (every rank gets the same answer: ranks that must take
        the same path, e.g. into a collective checkpoint, decide together)."""
        return any(self.gather(bool(flag))) if self.distributed else bool(flag)

    def barrier(self) -> None:
        if self.distributed:
            torch.distributed.barrier()

    def gather_graded(self, local, graded: tuple[list, list]) -> tuple:
        """(generation, answers, clusters) of the whole step from every rank's share, in rank order."""
        if not self.distributed:
            return local, *graded
        from tempo_bench.rollout.base import concat_generations

        parts = self.gather((local, graded))
        answers = [a for _, (share, _) in parts for a in share]
        clusters = [c for _, (_, share) in parts for c in share]
        return concat_generations([generation for generation, _ in parts]), answers, clusters

    def share(self, count: int, group: int = 1) -> range:
        """This rank's contiguous share of ``count`` items (``count`` divisible by the world size),
        or with ``group`` > 1 the share of its group of that many consecutive ranks (the ranks one
        vLLM engine spans: they sample their shares together)."""
        if count % self.world:
            raise ConfigError(f"{count} questions per step do not split over {self.world} ranks: make "
                              "train.prompts_per_step (plus a method's labeled questions per step) a multiple of it")
        per = count // self.world * group
        first = self.rank // group * per
        return range(first, first + per)

    def gather(self, value) -> list:
        """Every rank's ``value`` (any picklable object), in rank order."""
        if not self.distributed:
            return [value]
        out = [None] * self.world
        torch.distributed.all_gather_object(out, value)
        return out

    def broadcast(self, value):
        """Rank 0's ``value`` on every rank."""
        if not self.distributed:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def sum_gradients(self, params: list[torch.nn.Parameter]) -> None:
        """Sum the gradients of ``params`` over ranks, in one flat buffer (a parameter without a
        gradient on this rank, because it had no rows, counts as zero)."""
        if not self.distributed or self.sharded:  # FSDP's reduce-scatter has summed them
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1).float() for g in grads])
        torch.distributed.all_reduce(flat)
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset: offset + g.numel()].view_as(g).to(p.dtype)
            offset += g.numel()

    def sum_values(self, values: dict[str, float]) -> dict[str, float]:
        """Each key's sum over ranks (a rank without rows in a minibatch passes no keys)."""
        if not self.distributed:
            return values
        totals: dict[str, float] = {}
        for part in self.gather(values):
            for key, value in part.items():
                totals[key] = totals.get(key, 0.0) + value
        return totals


def launched_ranks(device: str = "auto", sharding: str = "replicate") -> Ranks:
    """The ranks torchrun (or any launcher setting RANK and WORLD_SIZE) started; the process group
    is joined here (NCCL for a model on CUDA, gloo on CPU). A plain launch is one rank (and
    train.sharding=fsdp on one rank is a plain model)."""
    world = launched_world_size()
    if world == 1:
        return Ranks()
    rank = int(os.environ["RANK"])
    if not torch.distributed.is_initialized():
        from tempo_bench.policy.model import resolve_device

        # on GPUs, NCCL for CUDA tensors and gloo for CPU ones (offloaded FSDP shards gathered for
        # sampling or for vLLM, objects); on CPU, gloo
        backend = "cpu:gloo,cuda:nccl" if resolve_device(device).startswith("cuda") else "gloo"
        if backend != "gloo":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend, timeout=timedelta(seconds=TIMEOUT_S))
    return Ranks(rank, world, sharded=sharding == "fsdp")


def check_same_config(ranks: Ranks, config) -> None:
    """Every rank was given the same config, and one a data-parallel run can do; else the same
    error on every rank (never a hang at the first collective)."""
    from tempo_bench.policy.model import resolve_device

    if config.train.offload and resolve_device(config.model.device) == "cpu":
        raise ConfigError("train.offload moves FSDP shards from the GPU to host memory, and this model is on the CPU: "
                          "leave train.offload off")
    if not ranks.distributed:
        from tempo_bench.policy.model import spread_over_gpus

        if config.train.sharding == "fsdp" and spread_over_gpus(config.model):
            raise ConfigError("train.sharding=fsdp on one process with several GPUs: the model would be spread over "
                              "them with device_map instead; launch one rank per GPU with torchrun")
        return
    from tempo_bench.config import flatten

    mine = flatten(config.model_dump())
    everyone = ranks.gather(mine)
    differ = sorted({k for other in everyone for k in set(other) | set(mine) if other.get(k) != mine.get(k)})
    if differ:
        raise ConfigError(f"the {ranks.world} ranks were launched with different configs (differing: "
                          f"{', '.join(differ[:8])}): launch every rank with the same command")
    if config.rollout.backend not in ("hf", "vllm"):
        raise ConfigError(f"rollout.backend={config.rollout.backend!r} has not been made to run on several ranks: use "
                          "hf or vllm with torchrun")
    tensor_parallel = config.rollout.vllm.tensor_parallel_size
    if config.rollout.backend == "vllm" and ranks.world % tensor_parallel:
        raise ConfigError(f"rollout.vllm.tensor_parallel_size={tensor_parallel} does not divide the {ranks.world} "
                          "ranks: each engine spans that many consecutive ranks (one GPU each); use a divisor of "
                          "the number of ranks")
    if config.train.mode == "full" and config.train.sharding != "fsdp":
        raise ConfigError("train.mode=full on several ranks needs train.sharding=fsdp (a whole fully fine-tuned "
                          "replica per rank is not supported)")
    if config.rollout.seeding != "question":
        raise ConfigError("a run on several ranks needs rollout.seeding=question (per-question seeds: samples "
                          "that do not depend on the number of ranks)")
    ranks.share(config.step_shape().questions)


def generate_share(backend, ranks: Ranks, prompts: list[str], sampling, config, step: int):
    """This rank's share of a step's rollouts (all of them on one rank). Its engine samples the
    rank's share, or, where it spans several ranks, their shares together, each question with the
    seed of its place in the step; the rank keeps its own."""
    mine, drawn = ranks.share(len(prompts)), ranks.share(len(prompts), backend.ranks_per_engine)
    local = backend.generate(prompts[drawn.start: drawn.stop], share_sampling(sampling, config, step, len(prompts), drawn))
    return local if drawn == mine else local.prompts(range(mine.start - drawn.start, mine.stop - drawn.start))


def share_sampling(sampling, config, step: int, count: int, mine: range):
    """A step's sampling settings for this rank's questions ``mine`` of ``count``: with
    rollout.seeding=question, their seeds (by their place in the whole step's list)."""
    if config.rollout.seeding != "question":
        return sampling
    from dataclasses import replace

    from tempo_bench.core.seeds import question_seeds

    return replace(sampling, seeds=question_seeds(config.seed, step, count)[mine.start: mine.stop])


def finish(ranks: Ranks) -> None:
    if ranks.distributed and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
