"""Rollout backends behind one interface: ``get_backend("hf")`` returns the class (hf: our own
sampling loop over a transformers model, anywhere; vllm: a vLLM engine in this process, on a GPU
or on vLLM's CPU build, optional extra)."""

from tempo_bench.core.registry import Registry
from tempo_bench.rollout.base import Generation, RolloutBackend, SamplingParams

BACKENDS = Registry(
    "rollout backend",
    {"hf": "tempo_bench.rollout.hf:HFBackend", "vllm": "tempo_bench.rollout.vllm:VLLMBackend"},
)


def get_backend(name: str) -> type[RolloutBackend]:
    return BACKENDS.get(name)


__all__ = ["BACKENDS", "Generation", "RolloutBackend", "SamplingParams", "get_backend"]
