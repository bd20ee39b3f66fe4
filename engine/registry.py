"""Named registries: where a stage lists the gates or explanation methods it implements.

A stage module creates one ``Registry`` and registers each implementation next to its definition
(``@register_gate("name")`` in engine/nightly/gates.py, ``@register_method("name")`` in
engine/explain/methods.py), so adding one is a single change in a single module. Everything that
needs the names (the manifest's "use one of ..." messages, the gate evaluation, the explainer
lookup) reads the registry instead of keeping its own list, and a list cannot fall behind.

Imports nothing: the manifest reaches the names through it without loading a stage's
dependencies beyond the registering module itself.
"""

from __future__ import annotations

from typing import Generic, Iterator, Mapping, TypeVar

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """Name -> entry, in registration order (the order messages list the names in and, for gates,
    the order they are evaluated in). Iterating yields the names."""

    def __init__(self, kind: str) -> None:
        #: What an entry is, for messages ("gate", "explanation method").
        self.kind = kind
        self._entries: dict[str, T] = {}

    def add(self, name: str, entry: T) -> T:
        # Two implementations under one name would silently shadow each other: a programming error.
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} needs a non-empty name, got {name!r}")
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._entries[name] = entry
        return entry

    def remove(self, name: str) -> T:
        """Take ``name`` out again (tests that register a dummy entry); KeyError if it is not there."""
        return self._entries.pop(name)

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def __getitem__(self, name: str) -> T:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(tuple(self._entries))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"


__all__ = ["Registry"]
