"""`Registry`: things of one kind looked up by name (models, encoders, presets, losses, fitters, SSL methods).

Register, don't branch: a new model, loss or fitter adds an entry where it is defined, and the code that uses it asks
the registry by name. Each registry keeps its own wording for an unknown name, since that message reaches users.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from hifusion.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Named entries in registration order. `unknown` is the error for a missing name: a format string with
    `{name}` and `{known}` (the registered names, sorted and comma-separated)."""

    def __init__(self, unknown: str) -> None:
        self.unknown = unknown
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register `item` under `name` (replacing what was there) and return it."""
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator form of `add`."""
        return lambda item: self.add(name, item)

    def get(self, name: str) -> T:
        """The entry called `name`; a missing name is a `ConfigError` listing the known ones."""
        if name not in self._items:
            raise ConfigError(self.unknown.format(name=name, known=", ".join(self.names())))
        return self._items[name]

    def find(self, name: str) -> T | None:
        """The entry called `name`, or None."""
        return self._items.get(name)

    def remove(self, name: str) -> None:
        self._items.pop(name, None)

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def values(self) -> list[T]:
        """Entries in registration order."""
        return list(self._items.values())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)
