"""Preemption: SIGTERM (what SLURM and Kubernetes send before SIGKILL) and SIGINT stop a run cleanly.

The handler only records the signal; the loop finishes the optimizer step it is in, writes a checkpoint and
stops with exit 128 + the signal number. Every rank stops at the same step: under several processes the
ranks all-reduce the signal they received after each step (one scalar, on the host), so a signal that reached one rank
stops them all. A second signal while the checkpoint is written acts as it would without this handler.
"""
from __future__ import annotations

import signal
import threading

import torch
import torch.distributed as dist

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def signal_name(signum: int) -> str:
    return signal.Signals(signum).name


class StopSignals:
    """Within the block, SIGTERM/SIGINT set ``received`` instead of ending the process."""

    def __init__(self) -> None:
        self.received = 0
        self._previous: dict = {}

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():  # signal handlers live in the main thread
            self._previous = {s: signal.signal(s, self._handle) for s in SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        self._restore()

    def _handle(self, signum, _frame) -> None:
        self.received = self.received or signum
        self._restore()  # a second signal is not caught: it stops the process as it would have

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def agreed(self, accelerator) -> int:
        """The signal any rank received (0: none); the same answer on every rank, agreed on the host."""
        if accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor([self.received], dtype=torch.int64)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=_host_group())
        return int(flag.numpy()[0])


_HOST_GROUP: list = []


def _host_group():
    """A gloo group over every rank (the default group when it is gloo): a flag reduced on the host does not
    wait for the GPU's queued work, as one reduced through NCCL would every step."""
    if dist.get_backend() == "gloo":
        return None
    if not _HOST_GROUP or _HOST_GROUP[0] is not dist.group.WORLD:  # made once per process group
        _HOST_GROUP[:] = [dist.group.WORLD, dist.new_group(backend="gloo")]  # every rank calls agreed() at one step
    return _HOST_GROUP[1]
