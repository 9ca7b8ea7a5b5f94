"""Errors raised for bad user input, before any training starts."""


class ConfigError(ValueError):
    """A configuration value is not allowed.

    Raised during validation (config dataclasses' ``__post_init__``, model/dataset checks), always
    before training starts. The message is one paragraph naming the key, the bad value, and what
    is allowed, so ``train.py`` prints it without a traceback.
    """


def check_choice(key: str, value: object, allowed: "list[str] | tuple[str, ...]") -> None:
    """Raise :class:`ConfigError` unless ``value`` is one of ``allowed``.

    Args:
        key: full config key, e.g. ``"pruner.scope"`` (used in the message).
        value: the value given.
        allowed: the permitted values.

    Raises:
        ConfigError: naming ``key``, ``value`` and the allowed values.
    """
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not allowed; choose one of: {', '.join(map(str, allowed))}.")


def check_range(key: str, value: float, lo: float, hi: float, *, hi_open: bool = False,
                lo_open: bool = False) -> None:
    """Raise :class:`ConfigError` unless ``lo <= value <= hi`` (bounds optionally open).

    Args:
        key: full config key (used in the message).
        value: the number given.
        lo, hi: the bounds; ``hi=float('inf')`` for no upper bound.
        hi_open, lo_open: exclude the bound itself.

    Raises:
        ConfigError: naming ``key``, ``value`` and the allowed interval.
    """
    ok_lo = value > lo if lo_open else value >= lo
    ok_hi = value < hi if hi_open else value <= hi
    if not (ok_lo and ok_hi):
        interval = f"{'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
        raise ConfigError(f"{key}={value!r} is out of range; allowed: {interval}.")
