"""Lazy registries: name -> "module:Class", imported only when chosen (vLLM loads only if used)."""

from __future__ import annotations

import difflib
from importlib import import_module


def unknown_name(kind: str, name: str, choices: list[str], alternatives: str = "") -> str:
    """"unknown method 'tempoo' (did you mean 'tempo'?); available: ..." """
    hint = difflib.get_close_matches(name, choices, n=1)
    return (
        f"unknown {kind} {name!r}"
        + (f" (did you mean {hint[0]!r}?)" if hint else "")
        + f"; available: {', '.join(choices)}{alternatives}"
    )


class Registry:
    def __init__(self, kind: str, entries: dict[str, str]):
        self.kind = kind
        self._entries = dict(entries)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def register(self, name: str, target: str) -> None:
        """Add ``name`` -> ``"package.module:Class"`` (for plug-ins outside this package)."""
        self._entries[name] = target

    def get(self, name: str):
        if name not in self._entries:
            raise KeyError(unknown_name(self.kind, name, self.names()))
        module, _, attr = self._entries[name].partition(":")
        return getattr(import_module(module), attr)
