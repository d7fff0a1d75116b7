"""Source mixture and the train/val split: deterministic decisions from hashes, never from row order.

* Split: ``sha256("split" + conversation hash)`` read as a fraction in [0, 1); below ``train_ratio`` is
  train. It depends on nothing but the conversation, so adding a source or changing the seed never moves
  an existing example between splits, and every copy of an upweighted example lands in the same split.
* Per-source multiplier ``m``: each kept train example is written ``floor(m)`` times plus once more with
  probability ``m - floor(m)``, drawn from ``sha256(seed + conversation hash)``: 0.5 keeps about half,
  2 writes everything twice. Validation examples are written at most once (repeats would only reweight
  the validation loss), and only when the draw keeps them.
* Multipliers come from ``weight`` alone, or are solved from ``mixture`` after a first pass has counted
  the kept train examples of each source (``solve_multipliers``):

  - ``target_ratios``: the listed sources share ``sum(ratios)`` of the output, each in its ratio; the
    unlisted ones keep their weighted size and fill the rest. With every source listed the output keeps
    the weighted total size and the ratios are normalised to sum to 1.
  - ``custom_data_ratio``: the ``domain: true`` sources share this fraction (in proportion to their
    weighted sizes); the others keep their weighted size: "add domain data until it is 10 %".
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Mapping

from utils.common.config_schema import setting
from utils.common.errors import UserError

MAX_REPEAT_WARNING = 10.0


@dataclass
class MixtureConfig:
    """``mixture`` of an SFT dataset config."""

    target_ratios: dict[str, float] = setting(
        default_factory=dict, additionalProperties={"type": "number", "minimum": 0, "maximum": 1})
    """Dataset entry name -> share of the written training examples (0 to 1). Unlisted entries keep their weighted
    size and fill the rest; when every entry is listed the ratios are normalised and the total size is kept."""
    custom_data_ratio: float | None = setting(None, type="number", minimum=0, maximum=1)
    """Share of the written training examples (0 to 1) taken from the entries marked "domain": true (repeated as
    needed); the other entries keep their weighted size. Not together with target_ratios."""

    def __post_init__(self) -> None:
        if self.target_ratios and self.custom_data_ratio is not None:
            raise UserError("mixture: set target_ratios or custom_data_ratio, not both")


def unit_fraction(*parts: bytes | str | int) -> float:
    """A deterministic number in [0, 1) from the SHA256 of ``parts``."""
    digest = hashlib.sha256(b"\x00".join(p if isinstance(p, bytes) else str(p).encode() for p in parts))
    return int.from_bytes(digest.digest()[:8], "big") / 2.0**64


def split_of(conversation_hash: bytes, train_ratio: float) -> str:
    """"train" or "val" for a conversation; stable across sources, seeds and runs."""
    return "train" if unit_fraction(b"split", conversation_hash) < train_ratio else "val"


def repeats(multiplier: float, conversation_hash: bytes, seed: int) -> int:
    """How many times an example is written: floor(m), plus one with probability frac(m)."""
    whole = math.floor(multiplier)
    if multiplier == whole:  # no fractional draw to make (the draw could only say "no")
        return whole
    return whole + (unit_fraction(b"mix", seed, conversation_hash) < multiplier - whole)


def check_mixture(mixture: MixtureConfig, names: list[str], domain: Mapping[str, bool]) -> None:
    """Config-time checks that need the dataset list: ratio keys name sources, domain sources exist."""
    unknown = sorted(set(mixture.target_ratios) - set(names))
    if unknown:
        raise UserError(f"mixture.target_ratios: {', '.join(unknown)} not among the dataset names "
                        f"({', '.join(names)}); fix the keys")
    listed = set(mixture.target_ratios)
    total = sum(mixture.target_ratios.values())
    if listed and listed != set(names) and total >= 1:
        raise UserError(f"mixture.target_ratios: listed ratios sum to {total:g}, leaving no room for "
                        f"{', '.join(n for n in names if n not in listed)}; list every source or lower them")
    if listed and total <= 0:
        raise UserError("mixture.target_ratios: every ratio is 0; give at least one positive ratio")
    if mixture.custom_data_ratio is not None:
        if not any(domain.values()):
            raise UserError('mixture.custom_data_ratio: no dataset has "domain": true; mark your own data')
        if all(domain.values()) and mixture.custom_data_ratio < 1:
            raise UserError('mixture.custom_data_ratio: every dataset has "domain": true, so nothing '
                            "else is left to fill the rest; mark only your own data")


def solve_multipliers(kept_train: Mapping[str, int], weights: Mapping[str, float],
                      domain: Mapping[str, bool], mixture: MixtureConfig) -> dict[str, float]:
    """Per-source multipliers that reach the configured shares of the train output (see module doc)."""
    sized = {name: kept_train[name] * weights[name] for name in kept_train}
    if mixture.target_ratios:
        shares = dict(mixture.target_ratios)
    elif mixture.custom_data_ratio is not None:
        ratio = mixture.custom_data_ratio
        dom = {n: s for n, s in sized.items() if domain[n]}
        dom_total = sum(dom.values())
        shares = {n: ratio * (s / dom_total if dom_total else 1 / len(dom)) for n, s in dom.items()}
    else:
        return dict(weights)
    free = [n for n in sized if n not in shares]
    if free:
        total = sum(sized[n] for n in free) / (1 - sum(shares.values()))
    else:
        total = sum(sized.values())
        norm = sum(shares.values())
        shares = {n: r / norm for n, r in shares.items()}
    out = {n: weights[n] for n in free}
    for name, share in shares.items():
        out[name] = share * total / kept_train[name] if kept_train[name] else 0.0
    return {name: out[name] for name in kept_train}


def mixture_warnings(config: MixtureConfig, multipliers: Mapping[str, float], kept_train: Mapping[str, int],
                     domain: Mapping[str, bool]) -> list[str]:
    """Lines to print when a source is repeated many times or cannot reach its share."""
    wanted = set(config.target_ratios) if config.target_ratios else (
        {n for n, d in domain.items() if d} if config.custom_data_ratio is not None else set())
    lines = []
    for name, m in multipliers.items():
        if m > MAX_REPEAT_WARNING:
            lines.append(f"warning: source '{name}' is written {m:.1f}x on average to reach its share; "
                         "the model may memorise it (add data or lower its share)")
        if name in wanted and not kept_train[name]:
            lines.append(f"warning: source '{name}' has no train examples left; its share cannot be met")
    return lines


def achieved_ratios(written: Mapping[str, int]) -> dict[str, float]:
    """Each source's share of the written train examples."""
    total = sum(written.values())
    return {name: (n / total if total else 0.0) for name, n in written.items()}
