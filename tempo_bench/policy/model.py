"""The policy model: a base causal LM plus a LoRA adapter (peft), and where models come from
(hub ids, local folders, the shipped toy checkpoints), on which device, with which tokenizer.

The adapter is saved with ``save_pretrained``: a standard peft adapter that vLLM and lm-eval load.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Iterator
from pathlib import Path

import torch

from tempo_bench.core import assets
from tempo_bench.core.errors import UserError
from tempo_bench.policy.lora_linear import fuse_lora_layers

TOY_MODEL = "toy"
TOY_RLVR = "toy-rlvr"
TOY_VERIFIER = "toy-verifier"


def resolve_model_path(path: str, part: str = "actor") -> str:
    """'toy' -> the pretrained checkpoint shipped in the package; 'toy-rlvr' -> the shipped RLVR
    stage's ``part`` ('actor' or 'critic'); 'toy-verifier' -> the verifier backbone; anything
    else is a hub id or local dir."""
    if path not in (TOY_MODEL, TOY_RLVR, TOY_VERIFIER):
        return path

    # read at call time: a test may point an asset folder elsewhere
    folder = {TOY_MODEL: assets.SHIPPED_DIR, TOY_RLVR: assets.RLVR_DIR / part, TOY_VERIFIER: assets.VERIFIER_DIR}[path]
    stage = {TOY_MODEL: "pretrain", TOY_RLVR: "rlvr", TOY_VERIFIER: "verifier-pretrain"}[path]
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(
            f"the shipped toy checkpoint {path!r} is missing from {folder}; rebuild it with "
            f"`tempo-bench toy-model build --stage {stage}`"
        )
    return str(folder)


class ModelLoadError(UserError):
    """The model a config names cannot be loaded."""


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
    (accelerate's device_map), for models too large for one; never in a data-parallel run
    (torchrun), where each rank has its own GPU."""
    from tempo_bench.core.processes import launched_world_size

    return (model_cfg is not None and model_cfg.device == "auto" and torch.cuda.device_count() > 1
            and launched_world_size() == 1)


def compute_device(model) -> torch.device:
    """Where ``model``'s passes run: its parameters' device, or an FSDP-sharded model's mesh device
    (with train.offload its shards live in host memory, and every pass runs on the GPU)."""
    param = next(model.parameters())
    mesh = getattr(param, "device_mesh", None)
    if mesh is None:
        return param.device
    return torch.device("cuda", torch.cuda.current_device()) if mesh.device_type == "cuda" else torch.device(mesh.device_type)


def place(model, model_cfg):
    """Move a loaded model to its device, unless accelerate already spread it over GPUs or it was
    built without weights (on the meta device: sharding gives it its place)."""
    if spread_over_gpus(model_cfg) or next(model.parameters()).is_meta:
        return model
    return model.to(resolve_device(model_cfg.device if model_cfg else "cpu"))


def pretrained(model_class, path: str, model_cfg, empty: bool = False, **kwargs):
    """``model_class.from_pretrained(path)`` with ``model_cfg``'s settings, or with ``empty`` the
    same architecture with its parameters on the meta device (nothing read; buffers such as rotary
    tables computed): the frame a sharded run fills with rank 0's weights."""
    kwargs = {**model_kwargs(model_cfg), **kwargs}
    if not empty:
        return model_class.from_pretrained(path, **kwargs)
    from accelerate import init_empty_weights
    from transformers import AutoConfig

    config = kwargs.pop("config", None) or AutoConfig.from_pretrained(path)
    with init_empty_weights():
        model = model_class.from_config(config, **kwargs)
    model.tie_weights()  # as from_pretrained does where the config says so (measured: not tied here without it)
    if model.can_generate():  # the checkpoint's generation settings (EOS ids, sampling defaults), as exported
        from transformers import GenerationConfig

        try:
            model.generation_config = GenerationConfig.from_pretrained(path)
        except OSError:  # a checkpoint without generation_config.json: from_pretrained derives it too
            pass
    return model


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


def build_model(base, model_cfg, lora_cfg=None, task_type: str = "CAUSAL_LM", adapter_dir: Path | None = None,
                prepare=None):
    """The one way a model is built, policy and critic alike, from a loaded ``base``: ``prepare``
    (a critic's verdict head, set on the bare backbone), gradient checkpointing (model.*), a LoRA
    adapter (fresh from ``lora_cfg``, or the one saved in ``adapter_dir``), LoRA's fused forward
    (lora.fused; on where no ``lora_cfg`` says otherwise), then the device (model.device)."""
    if prepare is not None:
        prepare(base)
    lora = lora_cfg is not None or adapter_dir is not None
    if model_cfg is not None and model_cfg.gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if lora:
            base.enable_input_require_grads()  # LoRA: the frozen embeddings' outputs need grads
    model = base
    if adapter_dir is not None:
        from peft import PeftModel

        model = PeftModel.from_pretrained(base, adapter_dir, is_trainable=True)
    elif lora_cfg is not None:
        from peft import get_peft_model

        model = get_peft_model(base, peft_config(lora_cfg, task_type))
    if lora and (lora_cfg is None or lora_cfg.fused):
        fuse_lora_layers(model)
    return place(model, model_cfg)


def load_policy(model_cfg, lora_cfg, cache: dict | None = None, empty: bool = False):
    """Base model with a fresh LoRA adapter (initialised so the policy starts equal to the base),
    on ``model_cfg.device``. On CPU, with a ``cache`` (shared by the runs of one process: sweep
    trials, compare), the base weights are read once and copied for each run; on a GPU, where a
    second copy may not fit, each run reads them. ``empty``: without weights (``pretrained``)."""
    import copy

    from transformers import AutoModelForCausalLM

    device = resolve_device(model_cfg.device)
    key = (resolve_model_path(model_cfg.path), model_cfg.dtype, model_cfg.attn_implementation, device)
    if device == "cpu" and cache is not None and not empty:
        if key not in cache:
            cache[key] = pretrained(AutoModelForCausalLM, key[0], model_cfg)
        base = copy.deepcopy(cache[key])
    else:
        base = pretrained(AutoModelForCausalLM, key[0], model_cfg, empty)
    return build_model(base, model_cfg, lora_cfg)


def merged_lora_weights(policy, every_weight: bool = False) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, W + delta) of every LoRA-targeted weight of a peft model, named as in the base
    checkpoint (what a plain copy of the base model, or vLLM's ``load_weights``, expects), one
    weight at a time in module order: a consumer holds one merged weight, not a model's worth
    (about 13 GiB at 8B). With ``every_weight``, the other weights too (embeddings, norms: as they
    are), so the stream is a whole checkpoint. The training model is not modified (no merge/unmerge
    round trip, which drifts bf16 weights)."""
    from peft.tuners.lora import LoraLayer

    for name, param in policy.named_parameters():
        if ".lora_" in name:
            continue
        module_name, _, leaf = name.rpartition(".")
        base_name = name.removeprefix("base_model.model.").replace(".base_layer", "")
        owner = policy.get_submodule(module_name.removesuffix(".base_layer"))
        if leaf == "weight" and isinstance(owner, LoraLayer) and owner.active_adapters:
            weight = param
            for adapter in owner.active_adapters:
                if adapter in owner.lora_A:
                    weight = weight + owner.get_delta_weight(adapter).to(weight.dtype)
            yield base_name, weight.detach()
        elif every_weight:
            yield base_name, param.detach()


def unwrapped(model):
    """The model a peft wrapper holds (its forward takes **kwargs and passes them on), or ``model``."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def forward_takes(model, name: str) -> bool:
    """Whether ``model``'s forward (under peft's wrapper) has a parameter ``name``: read once per class."""
    return _class_forward_takes(type(unwrapped(model)), name)


@functools.cache
def _class_forward_takes(model_class, name: str) -> bool:
    return name in inspect.signature(model_class.forward).parameters


def is_lora(model) -> bool:
    """Whether the policy trains a LoRA adapter (a peft model), not every weight (train.mode=full)."""
    return hasattr(model, "peft_config")


def trainable_parameters(model) -> list[torch.nn.Parameter]:
    return [p for p in model.parameters() if p.requires_grad]


def save_adapter(model, out_dir: Path) -> Path:
    """The policy's adapter only (a critic sharing the base keeps its own adapter on the same model)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, selected_adapters=["default"])
    return out_dir
