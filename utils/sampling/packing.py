"""Padding-free packing: examples concatenated into one row, positions restarting at each example.

The model sees ``position_ids`` that restart at 0 for every example; transformers turns
that into a block-diagonal causal mask, so attention never crosses examples. Targets are
shifted per example (the last token of an example predicts nothing), so no loss crosses
examples either.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from utils.common.labels import IGNORE


@dataclass
class PackedBatch:
    """One micro-batch: a single packed row of ``num_tokens`` tokens."""

    input_ids: torch.Tensor      # [1, N] long
    position_ids: torch.Tensor   # [1, N] long
    targets: torch.Tensor        # [1, N] long: the next token where supervised, else -100
    source_ids: torch.Tensor     # [1, N] long: which data source each position belongs to
    cu_seq_lens: torch.Tensor    # [num_examples + 1] int32 on the host: example bounds
    num_tokens: int
    num_supervised: int

    def to(self, device, pin: bool = False) -> "PackedBatch":
        """On ``device``; with ``pin`` copied from page-locked host memory, so the copy does not wait for the GPU."""
        move = {k: (getattr(self, k).pin_memory() if pin else getattr(self, k)).to(device, non_blocking=True)
                for k in ("input_ids", "position_ids", "targets", "source_ids")}
        return PackedBatch(**move, cu_seq_lens=self.cu_seq_lens, num_tokens=self.num_tokens,
                           num_supervised=self.num_supervised)


def shifted_targets(labels: np.ndarray) -> np.ndarray:
    """Position t is trained to predict labels[t + 1]; the last position predicts nothing."""
    out = np.full(len(labels), IGNORE, dtype=np.int64)
    out[:-1] = labels[1:]
    return out


def pack(examples: list[tuple[np.ndarray, np.ndarray, int]]) -> PackedBatch:
    """Pack (input_ids, labels, source_id) examples into one padding-free row."""
    ids = np.concatenate([e[0] for e in examples]).astype(np.int64)
    pos = np.concatenate([np.arange(len(e[0]), dtype=np.int64) for e in examples])
    tgt = np.concatenate([shifted_targets(e[1]) for e in examples])
    src = np.concatenate([np.full(len(e[0]), e[2], dtype=np.int64) for e in examples])
    bounds = np.cumsum([0] + [len(e[0]) for e in examples]).astype(np.int32)
    as_row = lambda a: torch.from_numpy(a).unsqueeze(0)  # noqa: E731
    return PackedBatch(as_row(ids), as_row(pos), as_row(tgt), as_row(src), torch.from_numpy(bounds),
                       num_tokens=len(ids), num_supervised=int((tgt != IGNORE).sum()))


def best_fit_decreasing(lengths: list[int], capacity: int, num_bins: int) -> tuple[list[list[int]], list[int]]:
    """Place items (by index) into ``num_bins`` bins of ``capacity`` tokens, longest first.

    Each item goes to the fullest bin it still fits in (best fit). Items that fit
    nowhere are returned as leftovers. Ties are broken by index, so the result is
    deterministic.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = [[] for _ in range(num_bins)]
    used = [0] * num_bins
    leftovers = []
    for i in order:
        fits = [b for b in range(num_bins) if used[b] + lengths[i] <= capacity]
        if not fits:
            leftovers.append(i)
            continue
        best = max(fits, key=lambda b: (used[b], -b))
        bins[best].append(i)
        used[best] += lengths[i]
    return bins, sorted(leftovers)


def balanced_groups(lengths: list[int], num_bins: int, per_bin: int) -> list[list[int]]:
    """Deal exactly ``per_bin`` items to each bin, longest first, to the lightest open bin."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = [[] for _ in range(num_bins)]
    used = [0] * num_bins
    for i in order:
        open_bins = [b for b in range(num_bins) if len(bins[b]) < per_bin]
        best = min(open_bins, key=lambda b: (used[b], b))
        bins[best].append(i)
        used[best] += lengths[i]
    return bins
