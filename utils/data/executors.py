"""Where the prepare stages run their tasks: here, in local worker processes, or on a Ray cluster.

A task is a module-level function applied to one small, picklable item (a partition of the input); it writes
its own part files under the stage's output and returns a small summary. ``map`` yields the summaries in input
order with a bounded number of tasks in flight, so the driver's memory does not grow with the input and the
output does not depend on which worker ran what, nor on how many there were.

``--executor ray`` runs the same functions as Ray tasks: on a local Ray instance (``ray.init(num_cpus=N)``) or
on a cluster (``--ray_address HOST:PORT`` of its head, or ``auto`` on one of its nodes). Every node must see the
project at the same path and the output directory on a shared filesystem (docs/DISTRIBUTED.md).
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import socket
from collections import deque
from pathlib import Path
from typing import Callable, Iterable, Iterator

from utils.common.errors import UserError, one_line

EXECUTORS = ("local", "ray")
"""--executor values: local (this machine's processes), ray (Ray tasks, local instance or cluster)."""
ROOT = Path(__file__).resolve().parents[2]
ONE_THREAD = {"TOKENIZERS_PARALLELISM": "false", "RAYON_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
"""A task computes on one core: N processes use N cores, and the tokenizer's own threads never compete."""
RAY_MISSING = ("--executor ray: the ray package is not installed; install it with `make ray` "
               "(pip install -r requirements-ray.txt), or use --executor local")


def one_thread() -> None:
    """Run this process's tokenizer and math on one thread (set before a tokenizer encodes)."""
    os.environ.update(ONE_THREAD)


@contextlib.contextmanager
def one_thread_while() -> Iterator[None]:
    """``one_thread`` for as long as the block runs, then the environment as it was: the caller's process (and
    every process it starts later) keeps its own thread settings."""
    saved = {key: os.environ.get(key) for key in ONE_THREAD}
    one_thread()
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _quiet_worker() -> None:
    one_thread()
    if multiprocessing.parent_process() is not None:  # Ctrl-C is the main process's to handle
        signal.signal(signal.SIGINT, signal.SIG_IGN)


class LocalExecutor:
    """``num_proc`` worker processes (fork), or this process alone when it is 1."""

    name = "local"

    def __init__(self, num_proc: int) -> None:
        self.num_proc = num_proc
        self.pool = None
        if num_proc > 1:
            methods = multiprocessing.get_all_start_methods()
            ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
            self.pool = ctx.Pool(num_proc, initializer=_quiet_worker)

    def describe(self) -> str:
        return f"local, {self.num_proc} process{'es' if self.num_proc > 1 else ''}"

    def map(self, fn: Callable, items: Iterable) -> Iterator:
        if self.pool is None:
            with one_thread_while():
                yield from map(fn, items)
            return
        pending: deque = deque()
        for item in items:
            pending.append(self.pool.apply_async(fn, (item,)))
            if len(pending) >= 2 * self.num_proc:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()

    def close(self) -> None:
        if self.pool is not None:
            self.pool.terminate()
            self.pool.join()


class RayExecutor:
    """Ray tasks of one CPU each: a local instance of ``num_proc`` CPUs, or the cluster at ``address``."""

    name = "ray"

    def __init__(self, num_proc: int, address: str | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise UserError(RAY_MISSING) from None
        if address and address != "auto":
            check_address(address)
        self.ray, self.address = ray, address
        self.owned = not ray.is_initialized()
        """False where the caller had connected to Ray already: its instance is left running on close."""
        env = {"env_vars": {**ONE_THREAD, "PYTHONPATH": str(ROOT)}}
        self._handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        """The caller's signal handlers: ray.init replaces SIGTERM's with its own exit; close puts them back."""
        try:
            if self.owned and address:
                ray.init(address=address, runtime_env=env, log_to_driver=False, ignore_reinit_error=True)
            elif self.owned:
                ray.init(num_cpus=num_proc, runtime_env=env, include_dashboard=False, log_to_driver=False,
                         ignore_reinit_error=True)
        except (ConnectionError, RuntimeError, ValueError) as err:
            where = f"--ray_address {address}" if address else "--executor ray"
            raise UserError(f"{where}: cannot connect to a Ray cluster ({one_line(err)[:200]}); start one with "
                            "`ray start --head` or fix the address") from None
        self.slots = max(1, int(ray.cluster_resources().get("CPU", num_proc)))
        self._remote: dict = {}

    def describe(self) -> str:
        where = f"cluster {self.address}" if self.address else "local instance"
        return f"ray ({where}, {self.slots} CPU{'s' if self.slots > 1 else ''})"

    def map(self, fn: Callable, items: Iterable) -> Iterator:
        if fn not in self._remote:
            self._remote[fn] = self.ray.remote(num_cpus=1, max_retries=0)(fn)
        remote = self._remote[fn]
        pending: deque = deque()
        for item in items:
            pending.append(remote.remote(item))
            if len(pending) >= 2 * self.slots:
                yield self._get(pending.popleft())
        while pending:
            yield self._get(pending.popleft())

    def _get(self, ref):
        try:
            return self.ray.get(ref)
        except self.ray.exceptions.RayTaskError as err:
            if isinstance(err.cause, UserError):
                raise UserError(str(err.cause)) from None
            raise

    def close(self) -> None:
        if self.owned:
            self.ray.shutdown()
            for sig, handler in self._handlers.items():
                signal.signal(sig, handler)


def check_address(address: str, timeout: float = 5.0) -> None:
    """A Ray head answers at HOST:PORT, or one line saying it does not (before ray waits on it for minutes)."""
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--ray_address {address}: expected HOST:PORT of the Ray head (e.g. 10.0.0.1:6379) or auto")
    try:
        socket.create_connection((host.removeprefix("ray://"), int(port)), timeout=timeout).close()
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise UserError(f"--ray_address {address}: no Ray cluster answers there ({reason}); start its head with "
                        "`ray start --head --port 6379` on that machine, or fix the address") from None


def make_executor(name: str, num_proc: int, address: str | None = None):
    """The executor ``--executor`` names; --ray_address needs --executor ray."""
    if name == "ray":
        return RayExecutor(num_proc, address)
    if address:
        raise UserError("--ray_address: only used with --executor ray; add it, or leave --ray_address out")
    return LocalExecutor(num_proc)
