"""Packing examples into micro-batches: targets and positions never cross examples, bins respect their budget."""
from __future__ import annotations

import numpy as np

from utils.common.labels import IGNORE
from utils.sampling.packing import best_fit_decreasing, greedy_bins, pack


def test_targets_never_cross_examples():
    a = (np.array([5, 6, 7], np.int32), np.array([IGNORE, 6, 7], np.int32), 0)
    b = (np.array([8, 9], np.int32), np.array([8, 9], np.int32), 1)
    batch = pack([a, b])
    assert batch.targets.tolist() == [[6, 7, IGNORE, 9, IGNORE]]
    assert batch.position_ids.tolist() == [[0, 1, 2, 0, 1]]
    assert batch.cu_seq_lens.tolist() == [0, 3, 5]
    assert batch.num_supervised == 3


def test_best_fit_decreasing_respects_capacity():
    lengths = [9, 7, 5, 5, 4, 3, 3, 2, 12]
    bins, leftovers = best_fit_decreasing(lengths, capacity=12, num_bins=3)
    assert all(sum(lengths[i] for i in b) <= 12 for b in bins)
    placed = sorted(i for b in bins for i in b) + leftovers
    assert sorted(placed) == list(range(len(lengths)))


def test_greedy_bins_keep_order_and_budget():
    lengths = [4, 5, 3, 20, 1, 1]
    assert list(greedy_bins(lengths, 10)) == [[0, 1], [2], [3], [4, 5]]  # 20 > budget: alone
    assert list(greedy_bins(lengths, 10, per_bin=4)) == [[0, 1, 2, 3], [4, 5]]  # a count, not tokens
    assert list(greedy_bins(lengths, 10, max_bins=2)) == [[0, 1], [2]]
    assert list(greedy_bins([], 10)) == []
