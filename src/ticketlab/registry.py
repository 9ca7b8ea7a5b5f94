"""Name -> object registries (one per concept: dataset, model, pruner, initializer).

Adding a method means writing one module that registers itself with a decorator; nothing else
needs editing. Modelled on facebookresearch/open_lth's registries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from ticketlab.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping from string keys to builders.

    Args:
        kind: what is registered (``"model"``, ``"pruner"``...), used in error messages and as
            the config key prefix (``model.name``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``.

        Raises:
            KeyError: if ``name`` is already registered (two modules claiming one name).
        """

        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the object registered under ``name``.

        Raises:
            ConfigError: if ``name`` is unknown; the message lists the registered names.
        """
        if name not in self._items:
            raise ConfigError(
                f"{self.kind}.name={name!r} is not a known {self.kind}; choose one of: "
                f"{', '.join(sorted(self._items))}."
            )
        return self._items[name]

    def names(self) -> list[str]:
        """Sorted list of registered names."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
