"""Argument checks shared by the methods: each raises a ValueError that names the argument."""

from __future__ import annotations

import math


def check_positive(name: str, value: object) -> float:
    """A finite int or float > 0 (not a bool), returned as a float."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_number(name: str, value: object, *, minimum: float = 0.0, strict: bool = False) -> float:
    """A finite int or float >= ``minimum`` (> with ``strict``), not a bool, returned as a float."""
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or value < minimum
        or (strict and value == minimum)
    ):
        relation = ">" if strict else ">="
        raise ValueError(f"{name} must be a finite number {relation} {minimum}, got {value!r}")
    return float(value)


def check_count(name: str, value: object, minimum: int = 1) -> int:
    """An int (not a bool) >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_flag(name: str, value: object) -> bool:
    """A bool: ``return_evaluations=1`` is refused rather than read as true (a typo's 0/1, or a
    number passed to the wrong keyword, should not silently change the result's form)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__} {value!r}")
    return value
