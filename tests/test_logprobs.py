"""The policy's per-token log-probabilities and entropies from the lean path (the head applied to
the response positions' hidden states in checkpointed chunks) equal the whole-logits path's, and
so do their gradients."""

import pytest
import torch

from tempo_bench.config import LoraConfig, ModelConfig
from tempo_bench.core.algos import token_entropy, token_logprobs
from tempo_bench.policy.batch import _lean_head, make_train_batch, response_logits, response_logprobs
from tempo_bench.policy.model import load_policy, trainable_parameters


def whole_path(model, batch, temperature):
    logits = response_logits(model, batch).float() / temperature
    return token_logprobs(logits, batch.response_ids), token_entropy(logits.detach())


@pytest.mark.parametrize("chunk_entries", [1, 10**9])  # one position per chunk; all at once
@pytest.mark.parametrize("lora", [True, False])  # a LoRA policy; every weight trained (the head tied to the embeddings)
def test_lean_logprobs_equal_the_whole_logits_path_with_gradients(chunk_entries, lora):
    torch.manual_seed(0)
    model = load_policy(ModelConfig(), LoraConfig() if lora else None)
    assert _lean_head(model) is not None  # the toy takes the lean path
    if lora:
        for p in trainable_parameters(model):  # a LoRA that is not zero, so that its gradients mean something
            p.data.normal_(0, 0.02)
    else:
        assert model.get_output_embeddings().weight is model.get_input_embeddings().weight
    vocab = model.config.vocab_size
    # right-padded rows of different prompt and response lengths
    batch = make_train_batch([[5, 6, 7], [8, 9], [4, 5, 6, 7, 8]], [[10, 11, 12, 13], [14], [15, 16]], pad_id=0)
    weights = torch.randn(batch.mask.shape) * batch.mask
    params = trainable_parameters(model)

    def grads(logp):
        for p in params:
            p.grad = None
        (logp * weights).sum().backward()
        return [p.grad.clone() for p in params]

    whole_logp, whole_entropy = whole_path(model, batch, 0.8)
    expected = grads(whole_logp)
    logp, entropy = response_logprobs(model, batch, 0.8, chunk_entries=chunk_entries)
    got = grads(logp)
    mask = batch.mask.bool()
    assert torch.allclose(logp[mask], whole_logp[mask], rtol=1e-6, atol=1e-6)
    assert torch.allclose(entropy[mask], whole_entropy[mask], rtol=1e-6, atol=1e-6)
    # one chunk: the same arithmetic, bit for bit; chunks of one position: the head's gradient is
    # summed chunk by chunk, a different float order (measured: at most 1.2e-6 of the gradient's norm)
    for a, b in zip(got, expected):
        assert float((a - b).norm()) <= (0 if chunk_entries > 10**6 else 1e-5) * float(b.norm())
    assert logp.shape == batch.mask.shape and vocab == model.get_output_embeddings().out_features


class ScaledLogits(torch.nn.Module):
    """A model whose logits are twice its head's output (as soft-capped or scaled models differ)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner

    def forward(self, **kwargs):
        out = self.inner(**kwargs)
        out.logits = out.logits * 2
        return out

    def get_output_embeddings(self):
        return self.inner.get_output_embeddings()

    def get_decoder(self):
        return self.inner.get_decoder()


def test_a_model_whose_logits_are_not_its_heads_output_takes_the_logits_path():
    model = ScaledLogits(load_policy(ModelConfig(), None))
    assert _lean_head(model) is None
    batch = make_train_batch([[5, 6, 7], [8, 9]], [[10, 11], [12, 13, 14]], pad_id=0)
    logp, _ = response_logprobs(model, batch, 1.0)
    expected, _ = whole_path(model, batch, 1.0)
    assert torch.equal(logp, expected)
