"""Methods behind one interface (tempo_bench.methods.base.Method), in a lazy registry.

Baselines live in the top-level ``baselines`` package; TEMPO itself in this one.
"""

from tempo_bench.methods.base import Method, RewardOutput, RolloutBatch
from tempo_bench.core.registry import Registry

METHODS = Registry(
    "method",
    {
        "standard_ttt": "tempo_bench.baselines.standard_ttt:StandardTTT",
        "fixed_critic": "tempo_bench.baselines.critic_baselines:FixedCritic",
        "online_critic": "tempo_bench.baselines.critic_baselines:OnlineCritic",
        "tempo": "tempo_bench.methods.tempo:Tempo",
        "labeled_rlvr": "tempo_bench.baselines.labeled_rlvr:LabeledRLVR",
        "empo": "tempo_bench.baselines.empo:EMPO",
        "oracle": "tempo_bench.baselines.oracle:Oracle",
    },
)


def method_names() -> list[str]:
    return METHODS.names()


def method_class(name: str) -> type[Method]:
    return METHODS.get(name)


__all__ = ["METHODS", "Method", "RewardOutput", "RolloutBatch", "method_class", "method_names"]
