"""Conventions every part shares about labels and losses."""
from __future__ import annotations

import math

IGNORE = -100
"""The label of a position that takes no loss (prompt, system turn, padding); torch's ignore_index default."""

PPL_CAP_LOSS = 50.0
"""Losses above this report perplexity exp(50) (~5e21) instead of overflowing JSON to Infinity."""


def perplexity(loss: float | None) -> float | None:
    """exp(loss), capped: the loss is a token-weighted mean negative log-likelihood in nats."""
    return None if loss is None else math.exp(min(loss, PPL_CAP_LOSS))
