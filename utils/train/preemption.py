"""Preemption: SIGTERM (what SLURM and Kubernetes send before SIGKILL) and SIGINT stop a run cleanly.

The handler only records the signal; the loop finishes the optimizer step it is in, writes a checkpoint and
stops with exit 128 + the signal number. Every rank stops at the same step: under several processes the
ranks all-reduce the signal they received after each step (one scalar), so a signal that reached one rank
stops them all. A second signal while the checkpoint is written acts as it would without this handler.
"""
from __future__ import annotations

import signal
import threading

import torch

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
        """The signal any rank received (0: none); the same answer on every rank."""
        if accelerator.num_processes == 1:
            return self.received
        flag = torch.tensor([float(self.received)], device=accelerator.device)
        return int(accelerator.reduce(flag, "max").item())
