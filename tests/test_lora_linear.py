"""The one-node LoRA linear layer (tempo_bench/policy/lora_linear.py) computes peft's function:
outputs and gradients against peft's own forward on the same weights, the fallbacks to peft's
forward, and copies that stay independent."""

import copy

import pytest
import torch

from tempo_bench.config import LoraConfig, ModelConfig
from tempo_bench.policy.lora_linear import LoraLinearFunction, fuse_lora_layers
from tempo_bench.policy.model import load_policy, trainable_parameters


def _nodes(tensor: torch.Tensor) -> set[str]:
    """Names of the autograd nodes behind ``tensor``."""
    seen, names, todo = set(), set(), [tensor.grad_fn]
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(next_fn for next_fn, _ in node.next_functions)
    return names


def _policies(**lora):
    """(peft's layers, fused layers) with the same non-zero adapter (B starts at zero in peft)."""
    plain = load_policy(ModelConfig(), LoraConfig(fused=False, **lora))
    torch.manual_seed(0)
    for p in trainable_parameters(plain):
        torch.nn.init.normal_(p, std=0.05)
    fused = copy.deepcopy(plain)
    assert fuse_lora_layers(fused) == 28  # 7 projections x 4 layers of the toy
    return plain, fused


def _logits_and_grads(model, ids):
    model.zero_grad()
    logits = model(input_ids=ids).logits
    (logits.pow(2).mean()).backward()
    return logits, [p.grad.clone() for p in trainable_parameters(model)]


def test_fused_layers_compute_peft_outputs_and_gradients():
    plain, fused = _policies()
    ids = torch.randint(3, 100, (6, 40), generator=torch.Generator().manual_seed(1))
    (a, grads_a), (b, grads_b) = _logits_and_grads(plain, ids), _logits_and_grads(fused, ids)
    assert "LoraLinearFunctionBackward" in _nodes(b) and "LoraLinearFunctionBackward" not in _nodes(a)
    assert torch.allclose(a, b, atol=1e-5, rtol=0)
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert ga.abs().max() > 0
        assert torch.allclose(ga, gb, atol=1e-6, rtol=1e-4)


def test_function_matches_its_definition_in_double_precision():
    """gradcheck: the hand-written backward against finite differences."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 5, dtype=torch.double, requires_grad=True)
    weight, bias = torch.randn(4, 5, dtype=torch.double), torch.randn(4, dtype=torch.double)
    a = torch.randn(2, 5, dtype=torch.double, requires_grad=True)
    b = torch.randn(4, 2, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, a, b: LoraLinearFunction.apply(x, weight, bias, a, b, 0.7), (x, a, b))
    expected = x @ weight.T + bias + 0.7 * (x @ a.T) @ b.T
    assert torch.allclose(LoraLinearFunction.apply(x, weight, bias, a, b, 0.7), expected)


@pytest.mark.parametrize("case", ["dropout", "disabled", "autocast", "hooked"])
def test_calls_outside_the_plain_case_take_peft_forward(case):
    plain, fused = _policies(**({"dropout": 0.1} if case == "dropout" else {}))
    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(2))
    fused.eval(), plain.eval()  # dropout off: both paths then compute the same numbers
    if case == "disabled":
        with fused.disable_adapter(), plain.disable_adapter():
            out, expected = fused(input_ids=ids).logits, plain(input_ids=ids).logits
    elif case == "hooked":  # an accelerate hook on the base layer (device_map offloading) moves its weight
        for module in fused.modules():
            if hasattr(module, "base_layer"):
                module.base_layer._hf_hook = object()
        out, expected = fused(input_ids=ids).logits, plain(input_ids=ids).logits
    elif case == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out, expected = fused(input_ids=ids).logits, plain(input_ids=ids).logits
    else:
        out, expected = fused(input_ids=ids).logits, plain(input_ids=ids).logits
    assert "LoraLinearFunctionBackward" not in _nodes(out)
    assert torch.equal(out, expected)


def test_a_copy_computes_with_its_own_adapter():
    """deepcopy (Critic.clone, the sampling copy) binds the copied layers' forward to the copy."""
    _, fused = _policies()
    other = copy.deepcopy(fused)
    ids = torch.randint(3, 100, (2, 12), generator=torch.Generator().manual_seed(3))
    before = fused(input_ids=ids).logits.detach()
    with torch.no_grad():
        for p in trainable_parameters(other):
            p.add_(0.1)
    assert torch.equal(fused(input_ids=ids).logits.detach(), before)
    assert not torch.allclose(other(input_ids=ids).logits.detach(), before)
    assert "LoraLinearFunctionBackward" in _nodes(other(input_ids=ids).logits)


def test_float32_adapters_on_a_bf16_base_take_the_node_and_agree_with_peft_to_bf16_rounding():
    """A bf16 base with float32 adapters (peft's default, every GPU run's case): the node casts the
    adapters for its bf16 products and returns float32 gradients; peft runs the LoRA branch in
    float32. Outputs and gradients agree to bf16's rounding (measured below)."""
    plain = load_policy(ModelConfig(dtype="bfloat16"), LoraConfig(fused=False))
    assert {p.dtype for p in trainable_parameters(plain)} == {torch.float32}
    torch.manual_seed(0)
    for p in trainable_parameters(plain):
        torch.nn.init.normal_(p, std=0.05)
    fused = copy.deepcopy(plain)
    assert fuse_lora_layers(fused) == 28
    ids = torch.randint(3, 100, (6, 40), generator=torch.Generator().manual_seed(1))
    (a, grads_a), (b, grads_b) = _logits_and_grads(plain, ids), _logits_and_grads(fused, ids)
    assert "LoraLinearFunctionBackward" in _nodes(b) and b.dtype == a.dtype == torch.bfloat16
    # bf16 keeps 8 bits of mantissa. Measured: logits 0.8% apart (relative norm), gradients 0.5%
    # (median layer) to 4.1% (worst); each path is as far from a float32 model: logits 0.9%, and
    # gradients 4.5% (peft) and 7.0% (this node) at the worst layer
    assert ((a.float() - b.float()).norm() / a.float().norm()) < 2e-2
    for ga, gb in zip(grads_a, grads_b, strict=True):
        assert gb.dtype == torch.float32 and ga.abs().max() > 0
        assert ((ga - gb).norm() / ga.norm()) < 5e-2
