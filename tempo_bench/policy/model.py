"""The policy: a base causal LM plus a LoRA adapter (peft), and its clipped policy-gradient update.

The adapter is saved with ``save_pretrained``: a standard peft adapter that vLLM and lm-eval load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from tempo_bench.core.errors import UserError
from tempo_bench.core.algos import LOSS_AVERAGES_OVER, POLICY_LOSSES, masked_mean, token_entropy, token_logprobs

TOY_MODEL = "toy"
TOY_RLVR = "toy-rlvr"
TOY_VERIFIER = "toy-verifier"


def resolve_model_path(path: str, part: str = "actor") -> str:
    """'toy' -> the pretrained checkpoint shipped in the package; 'toy-rlvr' -> the shipped RLVR
    stage's ``part`` ('actor' or 'critic'); 'toy-verifier' -> the verifier backbone; anything
    else is a hub id or local dir."""
    if path not in (TOY_MODEL, TOY_RLVR, TOY_VERIFIER):
        return path
    from tempo_bench.toy.model import RLVR_DIR, SHIPPED_DIR, VERIFIER_DIR

    folder = {TOY_MODEL: SHIPPED_DIR, TOY_RLVR: RLVR_DIR / part, TOY_VERIFIER: VERIFIER_DIR}[path]
    stage = {TOY_MODEL: "pretrain", TOY_RLVR: "rlvr", TOY_VERIFIER: "verifier-pretrain"}[path]
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"the shipped toy checkpoint {path!r} is missing from {folder}; rebuild it with "
            f"`tempo-bench toy-model build --stage {stage}`"
        )
    return str(folder)


class ModelLoadError(UserError):
    """The model a config names cannot be loaded."""


def check_inputs(config) -> None:
    """Every checkpoint and file a run config names can be read: the policy's model, a critic to
    start from (``critic.init``) and the task's questions (a malformed file is a DataError naming
    file and line). Called before any run is created."""
    from tempo_bench.tasks import load_task_data

    load_task_data(config.task)
    check_model(config.model.path)
    if config.critic.path is not None:
        check_model(config.critic.path)
    if config.critic.init is not None:
        try:
            folder = Path(resolve_model_path(config.critic.init, part="critic"))
        except FileNotFoundError as err:
            raise ModelLoadError(str(err)) from None
        if not (folder / "config.json").is_file():
            raise ModelLoadError(f"critic.init={config.critic.init!r}: no saved critic in {folder} "
                                 "(config.json missing); use 'toy-rlvr', a folder a critic was saved to, or null")


def check_model(path: str) -> None:
    """Fail fast, before any run is created, when the model's config cannot be read (a typo in a
    local path, or a hub id on a machine without hub access)."""
    from transformers import AutoConfig

    if path.startswith(("/", "./", "../", "~")) and not Path(path).expanduser().is_dir():
        raise ModelLoadError(f"could not load model {path!r}: no such local folder")
    try:
        AutoConfig.from_pretrained(resolve_model_path(path))
    except (OSError, ValueError) as err:
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelLoadError(
            f"could not load model {path!r}: {first_line}\n"
            "  model.path takes 'toy' (the shipped tiny model), a local checkpoint folder, or a "
            "hub id reachable from this machine"
        ) from None


def resolve_device(name: str) -> str:
    """'auto' -> 'cuda' when a GPU is visible, else 'cpu'; a CUDA device without a GPU is an error."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ModelLoadError(f"model.device={name!r}, but no CUDA device is visible; use 'auto' or 'cpu'")
    return name


def spread_over_gpus(model_cfg) -> bool:
    """model.device=auto with several GPUs visible: the layers are placed over all of them
    (accelerate's device_map), for models too large for one."""
    return model_cfg is not None and model_cfg.device == "auto" and torch.cuda.device_count() > 1


def place(model, model_cfg):
    """Move a loaded model to its device, unless accelerate already spread it over GPUs."""
    return model if spread_over_gpus(model_cfg) else model.to(resolve_device(model_cfg.device if model_cfg else "cpu"))


def model_kwargs(model_cfg) -> dict:
    """from_pretrained arguments of a ModelConfig (None: float32 defaults)."""
    if model_cfg is None:
        return {}
    kwargs = {"dtype": getattr(torch, model_cfg.dtype)}
    if spread_over_gpus(model_cfg):
        kwargs["device_map"] = "auto"
    if model_cfg.attn_implementation:
        kwargs["attn_implementation"] = model_cfg.attn_implementation
    return kwargs


def peft_config(lora_cfg, task_type: str):
    """The peft LoraConfig of a LoraConfig section; TOKEN_CLS also trains the value head in full."""
    from peft import LoraConfig

    return LoraConfig(r=lora_cfg.r, lora_alpha=lora_cfg.alpha, lora_dropout=lora_cfg.dropout,
                      target_modules=list(lora_cfg.target_modules), task_type=task_type)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(path))
    tokenizer.padding_side = "left"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prompt_renderer(tokenizer, model_cfg):
    """A function wrapping a question in the tokenizer's chat template (one user turn and the
    assistant's opening), or None when the model has no template or model.chat_template is off."""
    if not model_cfg.chat_template or not getattr(tokenizer, "chat_template", None):
        return None
    extra = dict(model_cfg.chat_template_kwargs)

    def render(text: str) -> str:
        return tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                             add_generation_prompt=True, **extra)

    return render


_BASE_MODELS: dict[tuple, torch.nn.Module] = {}


def load_policy(model_cfg, lora_cfg):
    """Base model with a fresh LoRA adapter (initialised so the policy starts equal to the base),
    on ``model_cfg.device``. On CPU the base weights are read once per process and copied for each
    run (sweep trials, compare); on a GPU, where a second copy may not fit, each run reads them."""
    import copy

    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    device = resolve_device(model_cfg.device)
    key = (resolve_model_path(model_cfg.path), model_cfg.dtype, model_cfg.attn_implementation, device)
    if device == "cpu":
        if key not in _BASE_MODELS:
            _BASE_MODELS[key] = AutoModelForCausalLM.from_pretrained(key[0], **model_kwargs(model_cfg))
        base = copy.deepcopy(_BASE_MODELS[key])
    else:
        base = place(AutoModelForCausalLM.from_pretrained(key[0], **model_kwargs(model_cfg)), model_cfg)
    if model_cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        base.enable_input_require_grads()  # LoRA: the frozen embeddings' outputs need grads
    return get_peft_model(base, peft_config(lora_cfg, "CAUSAL_LM"))


def merged_lora_weights(policy) -> list[tuple[str, torch.Tensor]]:
    """(name, W + delta) of every LoRA-targeted weight of a peft model, named as in the base
    checkpoint (what a plain copy of the base model, or vLLM's ``load_weights``, expects). The
    training model is not modified (no merge/unmerge round trip, which drifts bf16 weights)."""
    from peft.tuners.lora import LoraLayer

    out = []
    for name, module in policy.named_modules():
        if isinstance(module, LoraLayer) and module.active_adapters:
            weight = module.get_base_layer().weight
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    weight = weight + module.get_delta_weight(adapter).to(weight.dtype)
            base_name = name.removeprefix("base_model.model.").replace(".base_layer", "")
            out.append((base_name + ".weight", weight.detach()))
    return out


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


@dataclass
class TrainBatch:
    """Sequences to train on, response-aligned. B rows, T = longest response.

    input_ids/attention [B, L]: prompt + response, right-padded; response_index [B, T]: the
    position whose logits predict response token t; response_ids, mask, old_logp [B, T]."""

    input_ids: torch.Tensor
    attention: torch.Tensor
    response_index: torch.Tensor
    response_ids: torch.Tensor
    mask: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return int(self.attention.sum())


def make_train_batch(prompt_ids: list[list[int]], response_ids: list[list[int]], pad_id: int) -> TrainBatch:
    rows = len(prompt_ids)
    width = max(len(p) + len(r) for p, r in zip(prompt_ids, response_ids))
    resp_width = max(1, max(len(r) for r in response_ids))
    input_ids = torch.full((rows, width), pad_id, dtype=torch.long)
    attention = torch.zeros((rows, width), dtype=torch.long)
    index = torch.zeros((rows, resp_width), dtype=torch.long)
    targets = torch.full((rows, resp_width), pad_id, dtype=torch.long)
    mask = torch.zeros((rows, resp_width))
    for row, (p, r) in enumerate(zip(prompt_ids, response_ids)):
        seq = p + r
        input_ids[row, : len(seq)] = torch.tensor(seq)
        attention[row, : len(seq)] = 1
        if r:
            index[row, : len(r)] = torch.arange(len(p) - 1, len(p) + len(r) - 1)
            targets[row, : len(r)] = torch.tensor(r)
            mask[row, : len(r)] = 1.0
    return TrainBatch(input_ids, attention, index, targets, mask)


def response_logits(model, batch: TrainBatch) -> torch.Tensor:
    """Logits predicting each response token: [B, T, V]."""
    device = next(model.parameters()).device
    logits = model(
        input_ids=batch.input_ids.to(device), attention_mask=batch.attention.to(device)
    ).logits
    index = batch.response_index.to(device).unsqueeze(-1).expand(-1, -1, logits.shape[-1])
    return logits.gather(1, index)


def micro_batches(rows: torch.Tensor, size: int | None, lengths: torch.Tensor | None = None,
                  buckets: int = 1) -> list[torch.Tensor]:
    """Row indices split into micro-batches of at most ``size`` rows (None: no limit). With
    ``buckets`` > 1 the rows are first sorted by ``lengths`` and cut into that many groups of
    similar length, so that each micro-batch pads to its own longest row, not the batch's."""
    if buckets > 1 and lengths is not None and len(rows) > 1:
        rows = rows[torch.argsort(lengths[rows], stable=True)]
        groups = list(rows.chunk(min(buckets, len(rows))))
    else:
        groups = [rows]
    return [part for group in groups for part in (group.split(size) if size else [group])]


@torch.no_grad()
def sampled_logprobs(model, batch: TrainBatch, temperature: float, micro_rows: int | None) -> torch.Tensor:
    """log pi(response token) of every row under ``model``: [B, T] (0 past each response)."""
    out = torch.zeros(batch.response_ids.shape)
    for rows in micro_batches(torch.arange(batch.input_ids.shape[0]), micro_rows):
        mb = select_rows(batch, rows)
        device = next(model.parameters()).device
        logp = token_logprobs(response_logits(model, mb) / temperature, mb.response_ids.to(device))
        out[rows, : logp.shape[1]] = logp.cpu()
    return out


def policy_update(
    model,
    optimizer,
    batch: TrainBatch,
    advantages: torch.Tensor,
    train_cfg,
    temperature: float,
) -> dict[str, float]:
    """One M-step on a rollout batch: ``ppo_epochs`` passes of ``minibatches`` optimiser steps of
    the clipped objective (train_cfg.loss). Each optimiser step accumulates gradients over
    micro-batches of ``train_cfg.micro_batch_rows`` rows, weighted so that the gradient equals
    the whole minibatch's. advantages: [B] or [B, T]. Returns mean statistics."""
    loss_fn = POLICY_LOSSES[train_cfg.loss]
    by_tokens = LOSS_AVERAGES_OVER[train_cfg.loss] == "tokens"
    params = trainable_parameters(model)
    device = next(model.parameters()).device
    rows = batch.input_ids.shape[0]
    one_update = train_cfg.ppo_epochs == 1 and train_cfg.minibatches == 1
    lengths = batch.attention.sum(1)
    old_logp = None
    if not one_update:  # several updates on one batch: the ratio needs the pre-update policy
        old_logp = sampled_logprobs(model, batch, temperature, train_cfg.micro_batch_rows)
    stats: dict[str, list[float]] = {}
    model.train()
    for _ in range(train_cfg.ppo_epochs):
        for minibatch in torch.arange(rows).chunk(train_cfg.minibatches):
            total = float(batch.mask[minibatch].sum()) if by_tokens else float(len(minibatch))
            optimizer.zero_grad(set_to_none=True)
            step_stats: dict[str, float] = {}
            for micro in micro_batches(minibatch, train_cfg.micro_batch_rows, lengths, train_cfg.length_buckets):
                mb = select_rows(batch, micro)
                logits = response_logits(model, mb) / temperature
                logp = token_logprobs(logits, mb.response_ids.to(device))
                width = logp.shape[1]  # select_rows trims to the micro-batch's longest response
                mb_old = logp.detach() if old_logp is None else old_logp[micro, :width].to(device)
                mb_adv = advantages[micro] if advantages.dim() == 1 else advantages[micro, :width]
                mask = mb.mask.to(device)
                loss, loss_stats = loss_fn(logp, mb_old, mb_adv.to(device), mask,
                                           train_cfg.clip_low, train_cfg.clip_high)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"policy loss is {loss.item()}")
                share = (float(mb.mask.sum()) if by_tokens else float(len(micro))) / max(total, 1.0)
                (loss * share).backward()
                with torch.no_grad():
                    entropy = masked_mean(token_entropy(logits.detach()), mask)
                for key, value in {"loss": loss, "entropy": entropy, **loss_stats}.items():
                    step_stats[key] = step_stats.get(key, 0.0) + share * float(value.detach() if torch.is_tensor(value) else value)
                del logits, logp, loss
            step_stats["grad_norm"] = float(torch.nn.utils.clip_grad_norm_(params, train_cfg.grad_clip))
            optimizer.step()
            for key, value in step_stats.items():
                stats.setdefault(key, []).append(value)
    return {key: sum(v) / len(v) for key, v in stats.items()}


def select_rows(batch: TrainBatch, rows: torch.Tensor) -> TrainBatch:
    """The sub-batch of ``rows``, trimmed to its own longest sequence and response."""
    sub = TrainBatch(*(getattr(batch, f)[rows] for f in TrainBatch.__dataclass_fields__))
    width, resp = int(sub.attention.sum(1).max()), max(1, int(sub.mask.sum(1).max()))
    return TrainBatch(sub.input_ids[:, :width], sub.attention[:, :width], sub.response_index[:, :resp],
                      sub.response_ids[:, :resp], sub.mask[:, :resp])


def save_adapter(model, out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    return out_dir
