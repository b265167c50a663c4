"""Checks of user-given values, shared by every entry point (configs, data readers, datasets).

Each check returns the value in its canonical type or raises ``ValueError`` with one line that
names the option, what is allowed and what was given.
"""

from __future__ import annotations

import math

import numpy as np


def is_int(value) -> bool:
    """An integer that is not a bool (``True`` is not a width)."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def positive_int(name: str, value) -> int:
    """``value`` as an int >= 1.

    Example:
        >>> positive_int("width", 3)
        3
    """
    if not is_int(value) or value < 1:
        raise ValueError(f"{name} must be a positive integer (>= 1); got {value!r}.")
    return int(value)


def optional_positive_int(name: str, value) -> int | None:
    """None, or ``value`` as an int >= 1."""
    return None if value is None else positive_int(name, value)


def non_negative_int(name: str, value) -> int:
    """``value`` as an int >= 0."""
    if not is_int(value) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer (>= 0); got {value!r}.")
    return int(value)


def real(name: str, value) -> float:
    """``value`` as a finite float (bools, strings and None are not numbers here).

    Example:
        >>> real("lr", "fast")
        Traceback (most recent call last):
        ...
        ValueError: lr must be a real number; got 'fast'.
    """
    if isinstance(value, (bool, np.bool_, str)) or value is None:
        raise ValueError(f"{name} must be a real number; got {value!r}.")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number; got {value!r}.") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite; got {value!r}.")
    return v


def positive_real(name: str, value) -> float:
    """``value`` as a finite float > 0."""
    v = real(name, value)
    if not v > 0:
        raise ValueError(f"{name} must be > 0; got {value!r}.")
    return v


def bounded_real(name: str, value, *, minimum: float, strict: bool) -> float:
    """``value`` as a finite float ``> minimum`` (strict) or ``>= minimum``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number; got {value!r}.") from None
    below = v <= minimum if strict else v < minimum
    if not math.isfinite(v) or below:
        bound = f"> {minimum}" if strict else f">= {minimum}"
        raise ValueError(f"{name} must be finite and {bound}; got {value!r}.")
    return v


def check_sample_counts(n_inputs: int, n_labels: int, which: str, *, where: str = "") -> None:
    """Inputs and labels of one split agree on the number of samples, and it is not zero.

    ``where`` (a file path, say) prefixes the message.
    """
    prefix = f"{where}: " if where else ""
    if n_inputs != n_labels:
        raise ValueError(
            f"{prefix}{which} inputs and labels disagree on the number of samples: "
            f"{n_inputs} inputs vs {n_labels} labels."
        )
    if n_inputs == 0:
        raise ValueError(
            f"{prefix}{which} split is empty: at least one sample per class is needed."
        )
