"""Launching processes from tests: a free local port, and torchrun's arguments for N processes on this machine."""
from __future__ import annotations

import socket


def free_port() -> int:
    """A TCP port nothing listens on now (for a rendezvous or a local server)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int = 2) -> tuple[str, ...]:
    """``python`` arguments that launch a script under torchrun with ``nproc`` processes (gloo on the CPU)."""
    return ("-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(free_port()))
