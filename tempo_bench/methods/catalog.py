"""Every method the suite ships, in display order (tables, figures, ``--methods all``), and the
lookups the rest of the suite uses. Everything here derives from the registry: a newly registered
method is listed, validated, compared and covered by the leakage test without further edits."""

from __future__ import annotations

from tempo_bench.baselines import (
    critic_baselines,
    empo,
    label_free,
    labeled_rlvr,
    oracle,
    standard_ttt,
)
from tempo_bench.core.registry import unknown_name
from tempo_bench.methods import tempo
from tempo_bench.methods.base import Method
from tempo_bench.methods.registry import METHODS

# display order: TTRL, the critic methods, TEMPO, then the controls and the other label-free rewards
_ORDER = [m.__name__ for m in (standard_ttt, critic_baselines, tempo, labeled_rlvr, empo, label_free, oracle)]


def method_names() -> list[str]:
    """Registered methods in display order (methods registered from elsewhere come last)."""
    position = list(METHODS)
    return sorted(METHODS, key=lambda n: (_ORDER.index(METHODS[n].__module__) if METHODS[n].__module__ in _ORDER
                                          else len(_ORDER), position.index(n)))


def default_methods() -> list[str]:
    """What ``tempo-bench compare`` runs when no methods are named."""
    return [n for n in method_names() if METHODS[n].in_default_comparison]


def method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise KeyError(unknown_name("method", name, method_names()))
    return METHODS[name]


def uses_test_labels(name: str) -> bool:
    return method_class(name).uses_test_labels
