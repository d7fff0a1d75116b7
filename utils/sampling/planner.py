"""Deterministic weighted sampling across data sources, and the micro-batches of every optimizer step.

The draw is global: step N holds the same examples, in the same micro-batches, whatever
the number of processes; each rank takes its share of the step's micro-batches. Its
whole state is a few integers (saved in checkpoints), so a run resumes mid-epoch
without replaying any data.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from utils.sampling.packing import balanced_groups, best_fit_decreasing


class MixtureSampler:
    """An endless stream of (source, example) drawn in proportion to the weights.

    Source choice is deterministic error diffusion (the source furthest behind its share
    goes next), so the achieved mixture tracks the weights at every prefix of the
    stream. Within a source, examples follow a seeded permutation, reshuffled on each
    pass over that source.

    Weights changed on resume (``load_state_dict`` of a state saved under other shares) apply from that
    point: the diffusion counts only the draws since the change (``base``), so no source is drawn alone to
    catch up on the steps before it, and each source's permutation continues where it stopped.
    """

    def __init__(self, sizes: list[int], weights: list[float], seed: int):
        if len(sizes) != len(weights) or not sizes:
            raise ValueError("one weight per source is needed")
        total = float(sum(weights))
        self.sizes = list(sizes)
        self.shares = [w / total for w in weights]
        self.seed = seed
        self.drawn = [0] * len(sizes)
        self.base = [0] * len(sizes)
        """Draws per source when the weights last changed; the mixture is tracked from there."""
        self.changed_from: list[float] | None = None
        """The checkpoint's shares when ``load_state_dict`` found other weights, else None."""
        self._perm_cache: dict[tuple[int, int], np.ndarray] = {}

    def _permutation(self, source: int, cycle: int) -> np.ndarray:
        key = (source, cycle)
        if key not in self._perm_cache:
            if len(self._perm_cache) > 2 * len(self.sizes):
                self._perm_cache.clear()
            rng = np.random.Generator(np.random.PCG64([self.seed, source, cycle]))
            self._perm_cache[key] = rng.permutation(self.sizes[source])
        return self._perm_cache[key]

    def next(self) -> tuple[int, int]:
        since = [d - b for d, b in zip(self.drawn, self.base)]
        total = sum(since) + 1
        source = max(range(len(self.sizes)),
                     key=lambda s: (self.shares[s] * total - since[s], -s))
        cycle, pos = divmod(self.drawn[source], self.sizes[source])
        self.drawn[source] += 1
        return source, int(self._permutation(source, cycle)[pos])

    def state_dict(self) -> dict:
        state = {"drawn": list(self.drawn), "shares": list(self.shares)}
        if any(self.base):
            state["base"] = list(self.base)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore the draws; shares other than the checkpoint's start a new mixture from here."""
        self.drawn = [int(x) for x in state["drawn"]]
        self.base = [int(x) for x in state.get("base", [0] * len(self.drawn))]
        saved = state.get("shares")  # absent in checkpoints written before weights could change
        self.changed_from = None
        if saved is not None and not np.allclose(saved, self.shares, rtol=1e-9, atol=1e-12):
            self.changed_from = [float(x) for x in saved]
            self.base = list(self.drawn)


@dataclass
class StepBatches:
    """The micro-batches of one optimizer step; bins[j] runs on rank j % world, micro-step j // world."""

    bins: list[list[tuple[int, int]]]
    num_tokens: int
    num_supervised: int

    def for_rank(self, rank: int, world_size: int) -> list[list[tuple[int, int]]]:
        return self.bins[rank::world_size]


@dataclass
class StepPlanner:
    """Turns the sample stream into steps of ``num_bins`` micro-batches.

    Two batching modes: ``examples_per_bin`` (a fixed number of examples per
    micro-batch, token-balanced), or ``bin_tokens`` (a token budget per micro-batch,
    best-fit-decreasing; an example that fits no bin waits for the next step).
    """

    sampler: MixtureSampler
    lengths: list[np.ndarray]       # tokens per example, per source
    supervised: list[np.ndarray]    # supervised (shifted) targets per example, per source
    num_bins: int
    examples_per_bin: int | None = None
    bin_tokens: int | None = None
    carry: list[tuple[int, int]] = field(default_factory=list)

    def next_step(self) -> StepBatches:
        if self.examples_per_bin is not None:
            items = [self.sampler.next() for _ in range(self.num_bins * self.examples_per_bin)]
            groups = balanced_groups(self._lens(items), self.num_bins, self.examples_per_bin)
        else:
            items, groups = self._fill_by_tokens()
        bins = [[items[i] for i in g] for g in groups]
        bins.sort(key=lambda b: -sum(self.lengths[s][i] for s, i in b))
        return StepBatches(bins, num_tokens=sum(self._lens(items)),
                        num_supervised=int(sum(self.supervised[s][i] for s, i in items)))

    def _lens(self, items: list[tuple[int, int]]) -> list[int]:
        return [int(self.lengths[s][i]) for s, i in items]

    def _fill_by_tokens(self):
        capacity = self.num_bins * self.bin_tokens
        items, self.carry = list(self.carry), []
        used = sum(self._lens(items))
        while used < capacity:  # a running total: summing the list each time is quadratic in examples per step
            items.append(self.sampler.next())
            used += int(self.lengths[items[-1][0]][items[-1][1]])
        groups, leftovers = best_fit_decreasing(self._lens(items), self.bin_tokens, self.num_bins)
        while any(not g for g in groups):  # every micro-batch must hold an example
            groups, leftovers = self._fill_empty(groups, leftovers, items)
        self.carry = [items[i] for i in leftovers]
        return items, groups

    def _fill_empty(self, groups, leftovers, items):
        empty = next(b for b, g in enumerate(groups) if not g)
        donor = max(range(len(groups)), key=lambda b: len(groups[b]))
        if len(groups[donor]) < 2:
            raise ValueError("micro_batch_tokens is too small for the examples")
        groups[empty].append(groups[donor].pop())
        return groups, leftovers

    def state_dict(self) -> dict:
        return {"sampler": self.sampler.state_dict(), "carry": [list(c) for c in self.carry]}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        self.carry = [(int(s), int(i)) for s, i in state["carry"]]
