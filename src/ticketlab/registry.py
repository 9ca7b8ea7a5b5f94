"""Name -> object registries (one per concept: dataset, model, pruner, initializer, stage plan).

Adding a method, a model, a dataset or an initializer means writing one module that registers
itself with a decorator (its package imports every module it holds); nothing else needs editing.
What the rest of the code must know about an entry (a dataset held in memory, a model with a
fixed stem width) is declared with it as a *trait*, so no other module keeps a list of names.
Modelled on facebookresearch/open_lth's registries.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Generic, TypeVar

from ticketlab.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named mapping from string keys to builders, each with optional traits.

    Args:
        kind: what is registered (``"model"``, ``"pruner"``...), used in error messages and as
            the config key prefix (``model.name``).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}
        self._traits: dict[str, dict[str, Any]] = {}

    def register(self, name: str, **traits: Any) -> Callable[[T], T]:
        """Decorator registering ``obj`` under ``name``, with ``traits`` (e.g. ``in_memory=True``).

        Raises:
            KeyError: if ``name`` is already registered (two modules claiming one name).
        """

        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            self._traits[name] = dict(traits)
            return obj

        return deco

    def get(self, name: str) -> T:
        """Return the object registered under ``name``.

        Raises:
            ConfigError: if ``name`` is unknown; the message lists the registered names.
        """
        self.check(name)
        return self._items[name]

    def check(self, name: object, key: str | None = None) -> None:
        """Raise unless ``name`` is registered.

        Args:
            name: the configured name.
            key: the config key for the message (default ``<kind>.name``).

        Raises:
            ConfigError: naming the key, the value and every registered name.
        """
        if name not in self._items:
            raise ConfigError(f"{key or self.kind + '.name'}={name!r} is not a known {self.kind}; choose one of: "
                              f"{', '.join(sorted(self._items))}.")

    def trait(self, name: str, trait: str, default: Any = None) -> Any:
        """The trait ``trait`` that ``name`` was registered with (``default`` when it declared none).

        Raises:
            ConfigError: ``name`` is unknown.
        """
        self.check(name)
        return self._traits[name].get(trait, default)

    def with_trait(self, trait: str) -> list[str]:
        """Sorted names registered with a true ``trait``."""
        return sorted(n for n, t in self._traits.items() if t.get(trait))

    def names(self) -> list[str]:
        """Sorted list of registered names."""
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items
