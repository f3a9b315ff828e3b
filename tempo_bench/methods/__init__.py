"""Methods behind one interface (tempo_bench.methods.base.Method), in a lazy registry.

Baselines live in the top-level ``baselines`` package; TEMPO itself in this one.
"""

from tempo_bench.methods.base import Method, RewardOutput, RolloutBatch
from tempo_bench.registry import Registry

METHODS = Registry(
    "method",
    {
        "standard_ttt": "baselines.standard_ttt:StandardTTT",
    },
)


def method_names() -> list[str]:
    return METHODS.names()


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)


__all__ = ["METHODS", "Method", "RewardOutput", "RolloutBatch", "method_class", "method_names"]
