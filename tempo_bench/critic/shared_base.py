"""The self-critic on the policy's own base weights (``critic.share_base``).

The paper's critic starts from the policy's checkpoint. When that critic is trained through LoRA,
a second copy of the frozen base is pure waste (27.5 GiB for a 14B model in bf16): here the critic
is a second peft adapter, ``critic``, on the policy's base, plus its value head. Which adapter a
forward pass uses is the peft model's active adapter: the policy's (``default``) everywhere except
inside :meth:`SharedBaseValueModel.session`, which the critic holds for its whole scoring pass or
fit (forward *and* backward: a gradient-checkpointed backward pass recomputes the forward, and
peft's ``set_adapter`` also decides which adapter's weights require gradients). Neither update
touches the base, so a critic update changes no policy log-probability and a policy update no
critic value (tested).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch

from tempo_bench.core.errors import ConfigError
from tempo_bench.policy.model import unwrapped

POLICY_ADAPTER = "default"  # peft's name for the first adapter
CRITIC_ADAPTER = "critic"
MARKER = "shared_base.json"  # a saved shared-base critic: adapter + head, no base weights
HEAD_FILE = "value_head.safetensors"


def backbone_of(model) -> torch.nn.Module:
    """The transformer under a causal-LM or token-classification head (``model.model`` for Llama,
    Qwen3 and OLMo), where a peft model's wrapped model is unwrapped first."""
    inner = unwrapped(model)
    return getattr(inner, inner.base_model_prefix)


class SharedBaseValueModel(torch.nn.Module):
    """V(x, y_<=t) = head(hidden state of the policy's base under the ``critic`` adapter): [B, L, 1]
    logits like a token-classification model. Its parameters are the critic adapter's and the
    head's only; the policy is held, not registered, so it is neither copied nor saved with it."""

    def __init__(self, policy, head: torch.nn.Linear):
        super().__init__()
        self.score = head  # the name transformers gives a token-classification head (verdict_head)
        self.__dict__["policy"] = policy  # not a submodule
        self.config = policy.get_base_model().config

    @classmethod
    def attach(cls, policy, lora_cfg) -> "SharedBaseValueModel":
        """A fresh critic adapter (peft's initialisation) and value head on ``policy``; an adapter
        already attached (a resumed run's) is reused, its weights left to the caller to load."""
        from tempo_bench.policy.model import peft_config

        if CRITIC_ADAPTER not in policy.peft_config:
            policy.add_adapter(CRITIC_ADAPTER, peft_config(lora_cfg, "CAUSAL_LM"))
        policy.set_adapter(POLICY_ADAPTER)  # add_adapter leaves the policy's trainable, but make sure
        config, weight = policy.get_base_model().config, policy.get_input_embeddings().weight
        head = torch.nn.Linear(config.hidden_size, 1, device=weight.device, dtype=weight.dtype)
        return cls(policy, head)

    def adapter_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        """The critic adapter's LoRA weights in module order, named as in the policy model."""
        marker = f".{CRITIC_ADAPTER}."
        return [(name, p) for name, p in self.policy.named_parameters() if "lora_" in name and marker in name]

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]:
        yield from (p for _, p in self.adapter_parameters())
        yield from self.score.parameters()

    def get_input_embeddings(self):
        return self.policy.get_input_embeddings()

    @contextmanager
    def session(self) -> Iterator[None]:
        """The critic adapter active (and trainable), the policy in this module's train/eval mode;
        both restored on exit."""
        policy, was_training = self.policy, self.policy.training
        policy.set_adapter(CRITIC_ADAPTER)
        policy.train(self.training)
        try:
            yield
        finally:
            policy.set_adapter(POLICY_ADAPTER)
            policy.train(was_training)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None):
        from transformers.modeling_outputs import TokenClassifierOutput

        if CRITIC_ADAPTER not in self.policy.active_adapters:
            raise RuntimeError("the shared-base critic ran outside its session: the policy's adapter is active")
        hidden = backbone_of(self.policy)(input_ids=input_ids, attention_mask=attention_mask,
                                           use_cache=False).last_hidden_state
        # a base spread over GPUs (device_map) ends on its last one; the head lives by the embeddings
        return TokenClassifierOutput(logits=self.score(hidden.to(self.score.weight.device)))

    def save_pretrained(self, out_dir: Path, **_) -> None:
        """The critic adapter (a standard peft adapter folder), the head, and a marker naming the
        base it belongs on."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.policy.peft_config[CRITIC_ADAPTER].save_pretrained(out_dir)
        state = get_peft_model_state_dict(self.policy, adapter_name=CRITIC_ADAPTER)
        save_file({k: v.contiguous() for k, v in state.items()}, str(out_dir / "adapter_model.safetensors"))
        save_file({k: v.detach().contiguous() for k, v in self.score.state_dict().items()}, str(out_dir / HEAD_FILE))
        base = self.policy.peft_config[CRITIC_ADAPTER].base_model_name_or_path
        (out_dir / MARKER).write_text(json.dumps({"format": 1, "base": base, "adapter": CRITIC_ADAPTER}))

    def load_saved(self, out_dir: Path) -> None:
        """Load the weights :meth:`save_pretrained` wrote into this critic (its adapter must be
        attached to a policy on the same base)."""
        from peft import set_peft_model_state_dict
        from safetensors.torch import load_file

        device = self.score.weight.device
        result = set_peft_model_state_dict(self.policy, load_file(str(out_dir / "adapter_model.safetensors"),
                                                                  device=str(device)), adapter_name=CRITIC_ADAPTER)
        unexpected = list(getattr(result, "unexpected_keys", []))
        if unexpected:
            raise ConfigError(f"the saved critic in {out_dir} does not fit this policy's base: {unexpected[:3]}")
        self.score.load_state_dict(load_file(str(out_dir / HEAD_FILE), device=str(device)))


class SharedBase:
    """The critic's layout on the policy's base (critic/model.py ``OwnBase`` is the other): its
    passes run in the critic adapter's session; it trains its own parameters (adapter and head,
    trainable inside the session only); it cannot be copied apart from its run's policy."""

    name = "shared base"

    def session(self, model: SharedBaseValueModel):
        return model.session()

    def trainable(self, model: SharedBaseValueModel) -> list[torch.nn.Parameter]:
        return list(model.parameters())

    def copy(self, model: SharedBaseValueModel):
        raise TypeError("a shared-base critic lives on its run's policy: load its saved folder instead")


def is_shared_base_folder(path: Path) -> bool:
    return (Path(path) / MARKER).is_file()


@torch.no_grad()
def seeded_lora_critic_init(lora_a: list[torch.Tensor], head: torch.nn.Linear, std: float, seed: int) -> None:
    """Initialise a LoRA critic from ``seed`` alone: each LoRA A [r, in] as peft does
    (kaiming-uniform, a = sqrt 5; B stays zero), in module order, then the head as transformers
    does (normal(0, std), bias 0). A critic on its own copy of the base and one sharing the policy's
    then start equal, whatever the global random state consumed before (peft's and transformers'
    own initialisers draw from it)."""
    generator = torch.Generator().manual_seed(seed)
    for weight in lora_a:
        fresh = torch.empty(weight.shape, dtype=torch.float32)
        torch.nn.init.kaiming_uniform_(fresh, a=math.sqrt(5), generator=generator)
        weight.copy_(fresh.to(weight.dtype))
    weight = torch.empty(head.weight.shape, dtype=torch.float32).normal_(0.0, std, generator=generator)
    head.weight.copy_(weight.to(head.weight.dtype))
    if head.bias is not None:
        head.bias.zero_()
