"""argparse ``type=`` checkers: every command-line value is checked like a config value.

A bad value raises UserError (not argparse's ArgumentTypeError), so run_cli prints one ``error:`` line that
names the flag and exits 2 before anything is read or written.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

from utils.common.errors import UserError

SEED_MAX = 2**32 - 1
"""Largest accepted --seed (numpy's and most tools' seed range)."""


def _int(flag: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise UserError(f"{flag} {raw!r}: not an integer") from None


def int_at_least(flag: str, low: int, high: int | None = None) -> Callable[[str], int]:
    """An integer in [low, high]."""
    def check(raw: str) -> int:
        value = _int(flag, raw)
        if value < low or (high is not None and value > high):
            span = f"at least {low}" if high is None else f"between {low} and {high}"
            raise UserError(f"{flag} {raw}: must be an integer {span}")
        return value
    return check


def positive_int(flag: str) -> Callable[[str], int]:
    return int_at_least(flag, 1)


def seed(flag: str = "--seed") -> Callable[[str], int]:
    return int_at_least(flag, 0, SEED_MAX)


def weight(flag: str) -> Callable[[str], float]:
    """A finite sampling weight >= 0."""
    def check(raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise UserError(f"{flag} {raw!r}: not a number") from None
        if not math.isfinite(value) or value < 0:
            raise UserError(f"{flag} {raw}: each weight must be a finite number >= 0")
        return value
    return check


def positive_number(flag: str) -> Callable[[str], float]:
    """A finite number > 0."""
    def check(raw: str) -> float:
        value = weight(flag)(raw) if raw.strip() else -1.0
        if value <= 0:
            raise UserError(f"{flag} {raw!r}: give a number > 0")
        return value
    return check


def check_weights(flag: str, weights: Sequence[float] | None) -> None:
    """At least one weight > 0 (checked after parsing: it concerns the whole list)."""
    if weights is not None and not any(w > 0 for w in weights):
        raise UserError(f"{flag} {' '.join(f'{w:g}' for w in weights)}: all weights are 0; "
                        "give at least one weight > 0")


def output_dir(flag: str = "--output_dir") -> Callable[[str], str]:
    """A path that is, or can become, a directory: not an existing file, not below one."""
    def check(raw: str) -> str:
        if not raw:
            raise UserError(f"{flag}: empty path")
        path = Path(raw)
        for p in (path, *path.parents):
            try:
                is_file = p.exists() and not p.is_dir()
            except OSError:  # unreadable: the stage's own write reports it
                continue
            if is_file:
                where = "is a file" if p == path else f"is below {p}, which is a file"
                raise UserError(f"{flag} {raw}: {where}, not a directory; choose a directory path")
        return raw
    return check


def mapping(flag: str, shape: str = "NAME=PATH") -> Callable[[str], tuple[str, str]]:
    """``KEY=VALUE`` (both non-empty; the value may hold ``=``) as a pair."""
    def check(raw: str) -> tuple[str, str]:
        key, sep, value = raw.strip().partition("=")
        if not sep or not key or not value:
            raise UserError(f"{flag} {raw!r}: expected {shape}")
        return key, value
    return check
