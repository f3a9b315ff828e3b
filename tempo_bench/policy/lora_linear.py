"""A LoRA linear layer as one autograd node.

peft's ``lora.Linear`` computes base(x) + lora_B(lora_A(dropout(x))) * scaling through four
modules, a scaling multiply over the whole [tokens, out] output and an add, each its own operator
and autograd node, plus Python checks per call. On the toy's 64-wide model a training pass is
per-operator overhead, not arithmetic, so ``fuse_lora_layers`` gives each LoRA layer a forward
that computes the same function in three operators forward and five backward, the scaling
applied inside the last matmul (``addmm``'s alpha) and on the rank-r gradients. Arithmetic and
the tensors kept for the backward pass are those of peft's path (no merged weight, no weight
gradient), so it costs nothing at scale. Results equal peft's within float rounding (tested:
outputs and gradients), not bit for bit: ``lora.fused=false`` keeps peft's forward.

A bf16 (or fp16) base with float32 adapters, peft's default (``autocast_adapter_dtype``) and what
every GPU run has, takes the node too: the adapters are cast to the base's dtype for the products,
as autocast would; their gradients are computed in the base's dtype too and returned in float32
for the float32 master weights and AdamW (not float32-accurate gradients). peft computes that LoRA branch in float32 instead (the input cast to float32, a [tokens, in]
copy per layer), so the two agree to the base dtype's rounding (tested on CPU in bf16); on a GPU
this keeps every product of a LoRA layer a bf16 matmul.

Any layer or call outside the plain case (dropout, DoRA or another LoRA variant, a LoRA bias,
several active adapters, adapters disabled or merged, autocast, an input in another dtype than the
base weight, adapters of two dtypes, a trainable base weight, a base layer with an accelerate hook,
as when device_map offloads it) takes peft's own forward, checked at every call: adapters are
switched at run time (a critic sharing the policy's base is a second adapter on the same layers).
"""

from __future__ import annotations

import types

import torch
import torch.nn.functional as F


class LoraLinearFunction(torch.autograd.Function):
    """y = x W^T + b + scale * (x A^T) B^T for x [..., in], W [out, in], b [out] or None,
    A [r, in], B [out, r]; W and b frozen (no gradient). A and B may be in a wider dtype than x
    and W (float32 adapters on a bf16 base): the products then run in x's dtype and A's and B's
    gradients come back in theirs."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_a, lora_b, scale: float):
        ctx.adapter_dtype = lora_a.dtype
        lora_a, lora_b = lora_a.to(x.dtype), lora_b.to(x.dtype)  # the same tensors when the dtypes agree
        h = F.linear(x, lora_a)  # [..., r]
        y = F.linear(x, weight, bias)
        y.view(-1, y.shape[-1]).addmm_(h.reshape(-1, h.shape[-1]), lora_b.t(), alpha=scale)
        ctx.save_for_backward(x, weight, lora_a, lora_b, h)
        ctx.scale = scale
        return y

    @staticmethod
    def backward(ctx, grad):
        x, weight, lora_a, lora_b, h = ctx.saved_tensors
        scale, adapter_dtype = ctx.scale, ctx.adapter_dtype
        g = grad.reshape(-1, grad.shape[-1])  # [N, out]
        g_h = g @ lora_b  # [N, r]: the gradient at h, before the scale
        grad_x = grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = (g @ weight).addmm_(g_h, lora_a, alpha=scale).view(x.shape)
        if ctx.needs_input_grad[3]:
            grad_a = (g_h.t() @ x.reshape(-1, x.shape[-1])).mul_(scale).to(adapter_dtype)
        if ctx.needs_input_grad[4]:
            grad_b = (g.t() @ h.reshape(-1, h.shape[-1])).mul_(scale).to(adapter_dtype)
        return grad_x, None, None, grad_a, grad_b, None


def _plain_adapter(layer, x: torch.Tensor) -> str | None:
    """The one active adapter of ``layer`` when this call is the plain case, else None."""
    if layer.disable_adapters or layer.merged or len(layer.active_adapters) != 1 or torch.is_autocast_enabled(x.device.type):
        return None
    name = layer.active_adapters[0]
    if name not in layer.lora_A or not isinstance(layer.lora_dropout[name], torch.nn.Identity):
        return None
    if (layer.use_dora.get(name) or name in getattr(layer, "lora_variant", {})
            or getattr(layer, "lora_bias", {}).get(name) or layer.fan_in_fan_out):
        return None
    base = layer.get_base_layer()
    if hasattr(base, "_hf_hook"):  # accelerate moves (offloaded) weights in its hook: peft's path calls it
        return None
    if base.weight.requires_grad or (base.bias is not None and base.bias.requires_grad):
        return None
    adapter_dtype = layer.lora_A[name].weight.dtype
    if x.dtype != base.weight.dtype or layer.lora_B[name].weight.dtype != adapter_dtype or \
            adapter_dtype not in (x.dtype, torch.float32):  # e.g. bf16 adapters on fp16 could overflow
        return None
    return name


def _fused_forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    name = None if args or kwargs else _plain_adapter(layer, x)
    if name is None:
        return type(layer).forward(layer, x, *args, **kwargs)
    base = layer.get_base_layer()
    return LoraLinearFunction.apply(x, base.weight, base.bias, layer.lora_A[name].weight,
                                    layer.lora_B[name].weight, layer.scaling[name])


def fuse_lora_layers(model) -> int:
    """Give every peft LoRA Linear layer of ``model`` whose base is a plain ``nn.Linear`` the
    one-node forward (an instance attribute: the class, and peft's other layers, are untouched).
    Returns how many layers took it."""
    from peft.tuners.lora import Linear as LoraLinear

    count = 0
    for module in model.modules():
        if type(module) is LoraLinear and type(module.get_base_layer()) is torch.nn.Linear:
            module.forward = types.MethodType(_fused_forward, module)
            count += 1
    return count
