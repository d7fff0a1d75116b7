"""The next micro-batches, drawn and packed on a background thread while the current one trains.

On a GPU nothing in a steady-state step waits for the device, so the host runs ahead of it; drawing and packing
on the same thread would still put that host work between two micro-batches' kernel launches. ``Prefetcher``
draws the planner's steps and packs this rank's micro-batches (page-locked, ready for a copy that does not wait
for the GPU) on one thread, a bounded number of micro-batches ahead. The steps and batches are the ones the
planner draws inline, in the same order: only when they are made changes.

The planner belongs to the thread while it runs, so each step carries the planner's state after its draw: a
checkpoint written after step ``n`` records step ``n``'s, however far ahead the thread has drawn.
"""
from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Iterator

from utils.sampling.example_store import ExampleStore
from utils.sampling.packing import PackedBatch, pack
from utils.sampling.planner import StepBatches, StepPlanner


def collate(stores: list[ExampleStore], items: list[tuple[int, int]]) -> PackedBatch:
    """One micro-batch's examples, packed into one row."""
    return pack([(*stores[s].get(i), s) for s, i in items])


@dataclass
class FetchedStep:
    """One optimizer step: the planner's draw, the planner's state after it, this rank's packed micro-batches."""

    batches: StepBatches
    planner_state: dict
    micro_batches: Iterator[PackedBatch]


class Prefetcher:
    """``steps`` steps of ``planner``, each with this rank's micro-batches packed ``depth`` ahead on a thread.

    Use as a context manager; ``next_step()`` returns the next ``FetchedStep``. An error on the thread (a
    micro_batch_tokens too small for an example, a shard that fails to read) is raised by the call that would
    have received its batch.
    """

    _END = object()

    def __init__(self, planner: StepPlanner, stores: list[ExampleStore], steps: int, rank: int, world_size: int,
                 pin: bool = False, depth: int = 2):
        self.planner, self.stores, self.steps = planner, stores, steps
        self.rank, self.world_size, self.pin = rank, world_size, pin
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._produce, name="sft-prefetch", daemon=True)

    def __enter__(self) -> Prefetcher:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        while self._thread.is_alive():  # a put that waits for room sees the flag within its timeout
            self._thread.join(timeout=0.05)
            self._drain()
        self._drain()

    def _drain(self) -> None:
        """Drop what the thread made ahead and nobody will take (packed, perhaps page-locked, batches)."""
        while True:
            try:
                self._queue.get_nowait()
            except queue.Empty:
                return

    def next_step(self) -> FetchedStep:
        batches, planner_state = self._take()
        count = len(batches.for_rank(self.rank, self.world_size))
        return FetchedStep(batches, planner_state, (self._take() for _ in range(count)))

    def _take(self):
        item = self._queue.get()
        if item is self._END:
            raise RuntimeError("the prefetcher has no steps left")
        if isinstance(item, BaseException):
            raise item
        return item

    def _produce(self) -> None:
        try:
            for _ in range(self.steps):
                batches = self.planner.next_step()
                if not self._put((batches, self.planner.state_dict())):
                    return
                for items in batches.for_rank(self.rank, self.world_size):
                    batch = collate(self.stores, items)
                    if not self._put(batch.pinned() if self.pin else batch):
                        return
            self._put(self._END)
        except Exception as err:  # raised again on the training thread, where it is reported
            self._put(err)

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False
