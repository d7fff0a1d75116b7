"""Padding-free packing: examples concatenated into one row, positions restarting at each example.

The model sees ``position_ids`` that restart at 0 for every example; transformers turns
that into a block-diagonal causal mask, so attention never crosses examples. Targets are
shifted per example (the last token of an example predicts nothing), so no loss crosses
examples either.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterable, Iterator

import numpy as np
import torch

from utils.common.labels import IGNORE


@dataclass
class PackedBatch:
    """One micro-batch: a single packed row of ``num_tokens`` tokens.

    The packer knows on the host which positions are supervised, so it hands the loss their indices
    (``supervised``) with their targets and sources: selecting them on the device by a boolean mask would make
    the host wait for the GPU (the mask's count decides the output's shape) several times per micro-batch.
    """

    input_ids: torch.Tensor           # [1, N] long
    position_ids: torch.Tensor        # [1, N] long
    targets: torch.Tensor             # [1, N] long on the host: the next token where supervised, else -100
    supervised: torch.Tensor          # [S] long: the positions of the row with a target
    supervised_targets: torch.Tensor  # [S] long: their targets
    supervised_sources: torch.Tensor  # [S] long: which data source each of them belongs to
    cu_seq_lens: torch.Tensor         # [num_examples + 1] int32 on the host: example bounds
    num_tokens: int
    num_supervised: int

    def to(self, device, pin: bool = False) -> "PackedBatch":
        """On ``device``; with ``pin`` copied from page-locked host memory, so the copy does not wait for the GPU."""
        host = self.pinned() if pin else self
        return replace(self, **{k: getattr(host, k).to(device, non_blocking=True) for k in _ON_DEVICE})

    def pinned(self) -> "PackedBatch":
        """The tensors a device copy reads, in page-locked host memory (once: pinned ones stay as they are)."""
        return replace(self, **{k: t if t.is_pinned() else t.pin_memory()
                                for k in _ON_DEVICE for t in [getattr(self, k)]})

    def loss_inputs(self) -> tuple:
        """The arguments of ``SupervisedLoss``."""
        return (self.input_ids, self.position_ids, self.supervised, self.supervised_targets,
                self.supervised_sources, self.cu_seq_lens)

    def without_targets(self) -> "PackedBatch":
        """The same row with nothing supervised (a forward that adds nothing to a loss)."""
        none = self.supervised[:0]
        return replace(self, targets=torch.full_like(self.targets, IGNORE), supervised=none, supervised_targets=none,
                       supervised_sources=none, num_supervised=0)

    def supervised_per_source(self, num_sources: int) -> np.ndarray:
        """Supervised targets per data source, counted on the host."""
        return np.bincount(self.supervised_sources.cpu().numpy(), minlength=num_sources)[:num_sources]


_ON_DEVICE = ("input_ids", "position_ids", "supervised", "supervised_targets", "supervised_sources")


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
    kept = np.flatnonzero(tgt != IGNORE)
    as_row = lambda a: torch.from_numpy(a).unsqueeze(0)  # noqa: E731
    return PackedBatch(as_row(ids), as_row(pos), as_row(tgt), torch.from_numpy(kept.astype(np.int64)),
                       torch.from_numpy(tgt[kept]), torch.from_numpy(src[kept]), torch.from_numpy(bounds),
                       num_tokens=len(ids), num_supervised=len(kept))


def greedy_bins(lengths: Iterable[int], budget: int, per_bin: int | None = None,
                max_bins: int | None = None) -> Iterator[list[int]]:
    """Indices in order, packed greedily into bins of ``per_bin`` items when set, else of at most ``budget``
    tokens (a longer item goes alone); no more than ``max_bins`` bins when set. The validation batches of the
    training loop and of evaluation: a fixed order, so every run measures the same batches."""
    current: list[int] = []
    used = made = 0
    for i, length in enumerate(lengths):
        full = len(current) == per_bin if per_bin else used + length > budget
        if current and full:
            yield current
            made += 1
            if max_bins and made >= max_bins:
                return
            current, used = [], 0
        current.append(i)
        used += length
    if current:
        yield current


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
