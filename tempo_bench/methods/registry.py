"""Methods register themselves with a class decorator (as lm-evaluation-harness registers its
models): the name is set in one place, on the class, and checked to be a Method and unique."""

from __future__ import annotations

from tempo_bench.methods.base import Method

METHODS: dict[str, type[Method]] = {}


def register_method(name: str, *, default: bool = False):
    """Class decorator: register a :class:`Method` subclass as ``name``. ``default``: part of the
    comparison ``tempo-bench compare`` runs when no methods are named."""

    def register(cls):
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register_method({name!r}) takes a subclass of tempo_bench.methods.base.Method, got {cls!r}")
        taken = METHODS.get(name)
        if taken is not None and taken is not cls:
            raise ValueError(f"method name {name!r} is already registered by {taken.__module__}.{taken.__qualname__}")
        cls.name = name
        cls.in_default_comparison = default
        METHODS[name] = cls
        return cls

    return register
