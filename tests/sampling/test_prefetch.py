"""The prefetching thread: the steps and micro-batches the planner draws inline, in order, with the planner's state
of each step; its errors reach the training thread; leaving early stops it."""
from __future__ import annotations

import copy
import threading
import time

import pytest
import torch

from tests.train_helpers import random_store
from utils.sampling.planner import MixtureSampler, StepPlanner
from utils.sampling.prefetch import Prefetcher, collate


def _planner(stores, bins=4, bin_tokens=96):
    sampler = MixtureSampler([len(s) for s in stores], [0.6, 0.4], seed=3)
    return StepPlanner(sampler, [s.lengths for s in stores], [s.supervised_targets for s in stores],
                       num_bins=bins, bin_tokens=bin_tokens)


@pytest.mark.parametrize("rank", [0, 1])
def test_prefetched_steps_are_the_inline_steps_with_their_planner_state(rank):
    stores = [random_store("a", 50, 0), random_store("b", 30, 1)]
    inline, ahead = _planner(stores), _planner(stores)
    with Prefetcher(ahead, stores, steps=7, rank=rank, world_size=2, depth=2) as feed:
        for _ in range(7):
            want = inline.next_step()
            got = feed.next_step()
            assert got.batches.bins == want.bins and got.batches.num_supervised == want.num_supervised
            packed = list(got.micro_batches)
            expected = [collate(stores, items) for items in want.for_rank(rank, 2)]
            assert len(packed) == len(expected) == 2
            for p, e in zip(packed, expected):
                for name in ("input_ids", "position_ids", "supervised", "supervised_targets", "supervised_sources",
                             "cu_seq_lens"):
                    assert torch.equal(getattr(p, name), getattr(e, name)), name
            assert got.planner_state == inline.state_dict()  # the state after this step, not after the thread's


def test_the_thread_draws_no_further_than_asked():
    stores = [random_store("a", 50, 0), random_store("b", 30, 1)]
    inline, ahead = _planner(stores), _planner(stores)
    with Prefetcher(ahead, stores, steps=3, rank=0, world_size=1) as feed:
        for _ in range(3):
            list(feed.next_step().micro_batches)
            inline.next_step()
    assert ahead.state_dict() == inline.state_dict()


def test_an_error_on_the_thread_is_raised_where_its_batch_was_due():
    stores = [random_store("a", 50, 0, min_len=30, max_len=40), random_store("b", 30, 1, min_len=30, max_len=40)]
    planner = _planner(stores, bins=3, bin_tokens=20)  # no example fits a micro-batch
    with Prefetcher(copy.deepcopy(planner), stores, steps=50, rank=0, world_size=1) as feed:
        with pytest.raises(ValueError, match="micro_batch_tokens is too small"):
            for _ in range(50):
                list(feed.next_step().micro_batches)
        with pytest.raises(ValueError):  # inline, the same draw fails the same way
            for _ in range(50):
                planner.next_step()


def test_leaving_early_stops_the_thread_while_its_queue_is_full():
    stores = [random_store("a", 50, 0), random_store("b", 30, 1)]
    with Prefetcher(_planner(stores), stores, steps=1000, rank=0, world_size=1, depth=1) as feed:
        feed.next_step()
        thread = feed._thread
        assert thread.is_alive()
    thread.join(timeout=5)
    assert not thread.is_alive()
    assert "sft-prefetch" not in [t.name for t in threading.enumerate()]


def test_leaving_with_a_full_queue_stops_the_thread_at_once_and_drops_what_it_made_ahead():
    stores = [random_store("a", 50, 0), random_store("b", 30, 1)]
    with Prefetcher(_planner(stores), stores, steps=1000, rank=0, world_size=1, depth=3) as feed:
        waited = time.monotonic() + 30
        while not feed._queue.full() and time.monotonic() < waited:
            time.sleep(0.01)
        assert feed._queue.full()  # the thread now waits for room in its put
        thread, ahead, leaving = feed._thread, feed._queue, time.monotonic()
    assert time.monotonic() - leaving < 2 and not thread.is_alive()
    assert ahead.empty()
