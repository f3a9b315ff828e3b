"""The critic: a value model V(x, y_<=t) with a scalar head at every token, its optimiser, and the
two procedures every critic method shares: scoring rollouts and fitting outcome targets.

Like the paper's code (verl), the value model is a token-classification model with one output
(``AutoModelForTokenClassification``, num_labels=1) initialised from the policy's checkpoint: a
"self-critic". Targets are +1/-1 outcomes, so V ~ 2 P(correct) - 1.
"""

from __future__ import annotations

import copy
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from tempo_bench.core.algos import clipped_value_loss
from tempo_bench.core.errors import ConfigError
from tempo_bench.core.seeds import Stream, step_seed
from tempo_bench.critic.shared_base import SharedBase, SharedBaseValueModel, is_shared_base_folder, seeded_lora_critic_init
from tempo_bench.policy.batch import (
    TrainBatch,
    accumulated_step,
    micro_batches,
    model_inputs,
    select_rows,
)
from tempo_bench.policy.model import build_model, compute_device, pretrained, resolve_model_path


@dataclass
class StateIndex:
    """Where to read the value of each state: index [B, T+1] (sequence positions) and mask
    [B, T+1]; state t of row b has seen t response tokens, t = 0..len(response_b)."""

    index: torch.Tensor
    mask: torch.Tensor
    lengths: torch.Tensor  # [B] response lengths

    @classmethod
    def of(cls, batch: TrainBatch) -> "StateIndex":
        lengths = batch.mask.sum(1).long()
        prompt_lens = batch.attention.sum(1).long() - lengths
        t = torch.arange(batch.mask.shape[1] + 1)
        index = (prompt_lens.unsqueeze(1) - 1 + t).clamp(max=batch.input_ids.shape[1] - 1)
        mask = (t.unsqueeze(0) <= lengths.unsqueeze(1)).float()
        return cls(index, mask, lengths)


class OwnBase:
    """The critic's layout with a backbone of its own (a full model, or a LoRA adapter on a second
    copy of the base): nothing to switch around a pass; it trains what requires gradients; it
    copies whole. :class:`~tempo_bench.critic.shared_base.SharedBase` is the other layout."""

    name = "own base"

    def session(self, model):
        return nullcontext()

    def trainable(self, model) -> list[torch.nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def copy(self, model):
        return copy.deepcopy(model)


class Critic:
    """A value model, its layout and its optimiser."""

    def __init__(self, model, lr: float, weight_decay: float, grad_clip: float, micro_batch_rows: int | None = None,
                 length_buckets: int = 4, layout=OwnBase()):
        self.model, self.layout = model, layout
        self.lr, self.weight_decay, self.grad_clip = lr, weight_decay, grad_clip
        self.micro_batch_rows = micro_batch_rows  # rows per forward pass (memory), None: all
        self.length_buckets = length_buckets  # rows sorted by length into this many passes (padding)
        self.optimizer = torch.optim.AdamW(self._params(), lr=lr, weight_decay=weight_decay)
        self.ranks = None  # the ranks the value model is sharded over (Critic.sharded)

    @classmethod
    def from_pretrained(cls, path: str, cfg, model_cfg=None, lora_cfg=None, empty: bool = False) -> "Critic":
        """A fresh value head on the backbone at ``path`` ('toy' = the shipped model), on the
        device and in the dtype of ``model_cfg`` (default: CPU, float32). With ``cfg.lora`` the
        backbone is trained through a LoRA adapter (``lora_cfg``) and the head in full. ``empty``:
        its frame without weights (policy.model.pretrained), for sharding."""
        from transformers.utils import logging as hf_logging

        verbosity = hf_logging.get_verbosity()
        hf_logging.set_verbosity_error()  # the new head's "newly initialized weights" notice
        try:
            model = value_backbone(resolve_model_path(path), model_cfg, empty)
        finally:
            hf_logging.set_verbosity(verbosity)
        verdict = getattr(cfg, "head_init", "random") == "verdict" and not empty  # (an empty frame: no values to set)
        model = build_model(model, model_cfg, lora_cfg if getattr(cfg, "lora", False) else None, "TOKEN_CLS",
                            prepare=(lambda m: verdict_head(m, resolve_model_path(path), cfg.head_scale)) if verdict
                            else None)
        if getattr(cfg, "lora", False) and not empty:
            lora_a = [p for name, p in model.named_parameters() if "lora_A" in name]
            _seeded_init(lora_a, model, cfg, resolve_model_path(path))
        return cls(model, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.micro_batch_rows, cfg.length_buckets)

    @classmethod
    def sharing_base(cls, policy, cfg, lora_cfg, saved: Path | None = None) -> "Critic":
        """A LoRA critic on the policy's own base (critic.share_base): fresh, or the one saved in
        ``saved`` (optimiser state included)."""
        model = SharedBaseValueModel.attach(policy, lora_cfg)
        if saved is not None:
            model.load_saved(saved)
        else:
            lora_a = [p for name, p in model.adapter_parameters() if "lora_A" in name]
            _seeded_init(lora_a, model, cfg, model.config.name_or_path)
        critic = cls(model, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.micro_batch_rows, cfg.length_buckets,
                     SharedBase())
        if saved is not None:
            critic._load_optimizer(saved)
        return critic

    @classmethod
    def sharded(cls, build, cfg, ranks, dtype: torch.dtype, offload: bool, saved: Path | None = None) -> "Critic":
        """A critic whose value model ``build(empty)`` makes, sharded over ``ranks`` with FSDP2 as
        the policy of a train.sharding=fsdp run is: never whole on a GPU, filled from rank 0's copy
        (policy.sharding.shard_from_rank0), its AdamW state the one saved in ``saved`` where given.
        Its passes are then collectives: every rank scores and fits the same rows (the step's
        gathered batch, and rank 0's labeled rollouts: critic.ops.rollout_labeled), so the gradients
        are averaged over ranks and the update is the unsharded one."""
        from tempo_bench.policy.sharding import shard_from_rank0

        model = shard_from_rank0(build, ranks.main, dtype, offload, divide=float(ranks.world))
        critic = cls(model, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.micro_batch_rows, cfg.length_buckets)
        critic.ranks = ranks
        if saved is not None and (saved / "optimizer.pt").is_file():
            critic._load_optimizer(saved)
        return critic

    @property
    def is_sharded(self) -> bool:
        return self.ranks is not None

    def session(self):
        """What the value model needs active around a scoring pass or fit (the shared-base
        critic's adapter); the layout knows."""
        return self.layout.session(self.model)

    def _params(self):
        return self.layout.trainable(self.model)

    def clone(self) -> "Critic":
        """An independent copy (weights and optimiser state): each run starts from the same
        starting critic without touching the shared one."""
        other = Critic(self.layout.copy(self.model), self.lr, self.weight_decay, self.grad_clip, self.micro_batch_rows,
                       self.length_buckets, self.layout)
        other.optimizer.load_state_dict(copy.deepcopy(self.optimizer.state_dict()))
        return other

    def state_values(self, batch: TrainBatch, states: StateIndex | None = None) -> torch.Tensor:
        """V at every state: [B, T+1] (zero where ``states.mask`` is 0)."""
        states = states or StateIndex.of(batch)
        device = compute_device(self.model)
        out = self.model(**model_inputs(batch, device))
        values = out.logits.squeeze(-1).float()  # [B, L]
        return values.gather(1, states.index.to(device)) * states.mask.to(device)

    @torch.no_grad()
    def score(self, batch: TrainBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(state values [B, T+1], value of the complete response [B]) without gradients."""
        was_training = self.model.training
        self.model.eval()
        states = StateIndex.of(batch)
        values = torch.zeros(states.mask.shape)
        lengths = batch.attention.sum(1)
        with self.session():
            for rows in micro_batches(torch.arange(states.mask.shape[0]), self.micro_batch_rows, lengths,
                                      self.length_buckets):
                part = self.state_values(select_rows(batch, rows)).cpu()
                values[rows, : part.shape[1]] = part
        self.model.train(was_training)
        return values, values.gather(1, states.lengths.unsqueeze(1)).squeeze(1)

    def fit(
        self,
        batch: TrainBatch,
        targets: torch.Tensor,
        row_mask: torch.Tensor,
        epochs: int,
        cliprange_value: float,
        minibatch_rows: int = 256,
        generator: torch.Generator | None = None,
        old_values: torch.Tensor | None = None,
    ) -> dict[str, float]:
        """``epochs`` passes of minibatch updates of the clipped value loss towards ``targets``
        [B] (+1/-1) at every state of each row. Rows with ``row_mask`` [B] = 0 (unlabeled rows in
        TEMPO's E-step) are dropped before any compute: they never affect the critic."""
        keep = torch.nonzero(row_mask > 0).squeeze(1)
        if keep.numel() == 0:
            return {"critic/value_loss": float("nan"), "tokens/critic_step": 0}
        # the clip is around the values before this update (``old_values`` [B, T+1]: already scored)
        old = None if old_values is None else old_values[keep]
        batch, targets = select_rows(batch, keep), targets[keep].float()
        old = self.score(batch)[0] if old is None else old[:, : batch.mask.shape[1] + 1]
        losses, tokens = [], int(batch.attention.sum())

        def loss_of(rows: torch.Tensor):
            nonlocal tokens
            mb = select_rows(batch, rows)
            states = StateIndex.of(mb)
            values = self.state_values(mb, states).cpu()
            returns = targets[rows].unsqueeze(1).expand_as(values)
            tokens += int(mb.attention.sum())
            loss = clipped_value_loss(values, old[rows, : values.shape[1]], returns, states.mask, cliprange_value)
            return loss, float(states.mask.sum()), {}

        self.model.train()
        with self.session():  # forward and backward: a checkpointed backward pass reruns the forward
            for _ in range(epochs):
                order = torch.randperm(len(keep), generator=generator)
                for minibatch in order.split(minibatch_rows):
                    # the loss is a mean over states: each micro-batch weighs by its share of them
                    total = float(StateIndex.of(select_rows(batch, minibatch)).mask.sum())
                    parts = micro_batches(minibatch, self.micro_batch_rows, batch.attention.sum(1),
                                          self.length_buckets)
                    step_stats, _ = accumulated_step(self.optimizer, parts, loss_of, total,
                                                     self.grad_clip, "critic value loss")
                    losses.append(step_stats["loss"])
        self.model.eval()
        return {"critic/value_loss": sum(losses) / len(losses), "tokens/critic_step": tokens}

    def save(self, out_dir: Path, main: bool = True) -> Path:
        """Backbone + head as safetensors (``save_pretrained``), plus the optimiser state. A sharded
        critic is gathered first (every rank calls this then; rank 0, ``main``, writes), in the
        format of an unsharded one: a run resumes on any number of ranks."""
        model_state, optim_state = None, self.optimizer.state_dict()
        if self.is_sharded:
            model_state, optim_state = _gathered_state(self.model, self.optimizer)
        if main:
            out_dir.mkdir(parents=True, exist_ok=True)
            self.model.save_pretrained(out_dir, safe_serialization=True, **({"state_dict": model_state} if model_state else {}))
            torch.save(optim_state, out_dir / "optimizer.pt")
        return out_dir

    @classmethod
    def load(cls, out_dir: Path, cfg, model_cfg=None, policy=None, lora_cfg=None) -> "Critic":
        """A saved critic: a full model, (critic.lora) a LoRA adapter plus head on its base, or
        (critic.share_base) an adapter plus head on ``policy``'s base."""
        if is_shared_base_folder(out_dir):
            if policy is None:
                raise ConfigError(f"{out_dir} holds a critic that shares its policy's base: load it with the policy")
            return cls.sharing_base(policy, cfg, lora_cfg, saved=out_dir)
        model = saved_value_model(out_dir, model_cfg, lora_cfg)
        critic = cls(model, cfg.lr, cfg.weight_decay, cfg.grad_clip, cfg.micro_batch_rows, cfg.length_buckets)
        critic._load_optimizer(out_dir)
        return critic

    def _load_optimizer(self, out_dir: Path) -> None:
        state = out_dir / "optimizer.pt"
        if not state.is_file():
            return
        if not self.is_sharded:
            self.optimizer.load_state_dict(torch.load(state, weights_only=True, map_location="cpu"))
            return
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

        # every rank maps the saved (unsharded, keyed by parameter index) state and keeps its shards of it
        saved = torch.load(state, weights_only=True, map_location="cpu", mmap=True)
        if not saved["state"]:  # nothing learned yet (torch's setter would take a zero-lr step to create the state)
            return
        whole = _rekeyed(saved, dict(enumerate(_trainable_names(self.model))))
        set_optimizer_state_dict(self.model, self.optimizer, whole, options=StateDictOptions(full_state_dict=True))


def _gathered_state(model, optimizer) -> tuple[dict, dict]:
    """A sharded model's whole state dict and its optimiser's, on rank 0 (a collective), the
    optimiser's keyed by parameter index as ``optimizer.state_dict()`` keys it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_optimizer_state_dict

    # a LoRA critic's save keeps its adapter and head: its frozen base is not gathered
    whole = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=hasattr(model, "peft_config"))
    model_state = get_model_state_dict(model, options=whole)
    if not optimizer.state:  # (torch's getter would take a zero-lr step to create the state: AdamW's step count moves)
        return model_state, optimizer.state_dict()
    index = {name: i for i, name in enumerate(_trainable_names(model))}
    return model_state, _rekeyed(get_optimizer_state_dict(model, optimizer, options=whole), index)


def _trainable_names(model) -> list[str]:
    """The names of the parameters a critic's optimiser holds, in its order (Critic._params)."""
    return [name for name, param in model.named_parameters() if param.requires_grad]


def _rekeyed(optim_state: dict, keys: dict) -> dict:
    """An optimiser state dict with its parameters' keys mapped by ``keys``: from index to name
    (torch.distributed.checkpoint's full state dicts) or back (``optimizer.state_dict()``'s)."""
    return {"state": {keys[key]: value for key, value in optim_state.get("state", {}).items()},
            "param_groups": [{**group, "params": [keys[key] for key in group["params"]]}
                             for group in optim_state.get("param_groups", [])]}


def saved_value_model(out_dir: Path, model_cfg, lora_cfg=None, empty: bool = False):
    """The value model of a critic saved on its own base (Critic.save): a full model, or a LoRA
    adapter plus head on its base. ``empty``: its frame without weights (policy.model.pretrained),
    a LoRA critic's with a fresh adapter of ``lora_cfg`` in place of the saved one."""
    if (out_dir / "adapter_config.json").is_file():  # a LoRA critic: its base, then its adapter
        from peft import PeftConfig

        base_path = PeftConfig.from_pretrained(out_dir).base_model_name_or_path
        return build_model(value_backbone(base_path, model_cfg, empty), model_cfg, lora_cfg, "TOKEN_CLS",
                           adapter_dir=None if empty else out_dir)
    return build_model(value_backbone(str(out_dir), model_cfg, empty), model_cfg)


def value_backbone(path: str, model_cfg, empty: bool = False):
    """A token-classification model (one output: the value) of the checkpoint at ``path``, without
    dropout before the head (transformers defaults it to 0.1): a regression target and
    reproducible updates. A saved critic's own head is read back; a backbone's is new. ``empty``:
    its frame without weights (policy.model.pretrained)."""
    from transformers import AutoConfig, AutoModelForTokenClassification

    config = AutoConfig.from_pretrained(path, num_labels=1)
    config.classifier_dropout = 0.0
    return pretrained(AutoModelForTokenClassification, path, model_cfg, empty, config=config)


def _seeded_init(lora_a: list[torch.Tensor], model, cfg, backbone_dir: str) -> None:
    """A fresh LoRA critic's adapter and head from the critic's seed (then the verdict head where
    asked): equal whether the critic has its own base or shares the policy's."""
    head = model.score
    if hasattr(head, "modules_to_save"):  # peft trains a TOKEN_CLS head through its own copy
        head = head.modules_to_save[head.active_adapters[0]]
    std = getattr(model.config.get_text_config(), "initializer_range", 0.02)
    seeded_lora_critic_init(lora_a, head, std, step_seed(cfg.seed, 0, Stream.CRITIC_INIT))
    if cfg.head_init == "verdict":
        verdict_head(model, backbone_dir, cfg.head_scale, head)


@torch.no_grad()
def verdict_head(model, backbone_dir: str, scale: float, head: torch.nn.Linear | None = None) -> None:
    """Set a token-classification head to read a verifier's verdict: weight = scale * (E[yes] -
    E[no]) with E the backbone's tied output embeddings, bias 0. The head sees the same final
    hidden state the language-model head does, so at the response's last token (where the
    verifier was trained to write its verdict) the value is scale * (logit(yes) - logit(no))."""
    import json

    manifest = Path(backbone_dir) / "manifest.json"
    tokens = json.loads(manifest.read_text()).get("covers", {}).get("verdict_tokens") if manifest.is_file() else None
    if not tokens:
        raise ConfigError(f"critic.head_init=verdict needs a verifier backbone (critic.path: toy-verifier, or a "
                          f"folder built by `tempo-bench toy-model build --stage verifier-pretrain`); {backbone_dir} "
                          "has no verdict tokens in its manifest.json")
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(backbone_dir)
    yes, no = (tokenizer.convert_tokens_to_ids(tokens[k]) for k in ("correct", "wrong"))
    embeddings = model.get_input_embeddings().weight  # tied with the verifier's output layer
    head = head if head is not None else model.score if hasattr(model, "score") else model.classifier
    head.weight.copy_(scale * (embeddings[yes] - embeddings[no]).unsqueeze(0).to(head.weight.dtype))
    if head.bias is not None:
        head.bias.zero_()


def values_to_prob(values: torch.Tensor) -> torch.Tensor:
    """V in [-1, 1] (targets +1/-1) -> P(correct) = (V + 1) / 2, clipped to [0, 1]."""
    return ((values + 1) / 2).clamp(0.0, 1.0)
