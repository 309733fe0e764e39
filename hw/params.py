"""Validation of generator parameters, shared by every component.

Wrong type raises TypeError, wrong value ValueError; both carry the same message so that a CLI
can print it on one line.
"""

from .formats import WeightMode

__all__ = ["check_positive", "check_range", "check_mode", "check_choice", "check_bool",
           "signed_width"]


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_positive(what, value):
    """``value`` must be an integer >= 1."""
    msg = f"{what} must be a positive integer, not {value!r}"
    if not _is_int(value):
        raise TypeError(msg)
    if value < 1:
        raise ValueError(msg)
    return value


def check_range(what, value, lo, hi=None):
    """``value`` must be an integer in ``[lo, hi]`` (``hi`` None: no upper bound)."""
    if hi is None:
        msg = (f"{what} must be a non-negative integer, not {value!r}" if lo == 0 else
               f"{what} must be an integer of at least {lo}, not {value!r}")
    else:
        msg = f"{what} must be an integer from {lo} to {hi}, not {value!r}"
    if not _is_int(value):
        raise TypeError(msg)
    if value < lo or (hi is not None and value > hi):
        raise ValueError(msg)
    return value


def check_bool(what, value):
    """``value`` must be True or False."""
    if not isinstance(value, bool):
        raise TypeError(f"{what} must be a bool, not {value!r}")
    return value


def check_choice(what, value, choices):
    """``value`` must be one of the strings ``choices``."""
    listed = " or ".join(", ".join(repr(c) for c in choices).rsplit(", ", 1))
    msg = f"{what} must be {listed}, not {value!r}"
    if not isinstance(value, str):
        raise TypeError(msg)
    if value not in choices:
        raise ValueError(msg)
    return value


def check_mode(value):
    """Weight mode: a :class:`WeightMode` or its name."""
    if isinstance(value, WeightMode):
        return value
    return WeightMode(check_choice("Weight mode", value, [m.value for m in WeightMode]))


def signed_width(lo, hi):
    """Bits of the smallest two's complement signal holding every integer in ``[lo, hi]``."""
    width = 1
    while not (-(1 << (width - 1)) <= lo and hi <= (1 << (width - 1)) - 1):
        width += 1
    return width
