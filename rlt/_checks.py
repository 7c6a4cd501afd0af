"""Argument checks shared by every stage, so that their errors read the same."""

from __future__ import annotations

from collections.abc import Iterable


def check_choice(name: str, value: object, allowed: Iterable[str]) -> None:
    """Raises a ValueError naming the allowed values when ``value`` is not one of them."""
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
