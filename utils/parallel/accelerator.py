"""The accelerate set-up: one process or DDP (chosen by ``accelerate launch`` or torchrun outside); sharded runs
use the trainer's own FSDP2 (fsdp.py) on top of it."""
from __future__ import annotations

import os
import sys

import torch
import torch.distributed as dist
from accelerate import Accelerator

from utils.common.errors import UserError


def make_accelerator(mixed_precision: str, log_with: list | None = None) -> Accelerator:
    """An Accelerator for ``mixed_precision`` ("bf16", "fp16" or "no") on the GPU, or on CPU without one, logging
    to the trackers ``log_with`` (started later by ``init_trackers``)."""
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError("training_params.fp16: float16 training needs a GPU; use bf16 on CPU")
    launched = os.environ.get("ACCELERATE_MIXED_PRECISION", "no").lower()
    if launched not in ("no", mixed_precision):
        raise UserError(f"accelerate launch asks for mixed_precision {launched!r} (--mixed_precision or the "
                        f"config file's mixed_precision), training_params for {mixed_precision!r}: the trainer takes "
                        "its precision from training_params.bf16/fp16; launch with mixed_precision 'no' or the same")
    # cpu=True also makes accelerate set up gloo when torchrun starts several CPU processes
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available(), log_with=log_with)


def run_device() -> torch.device:
    """The device a training process computes on: its GPU where there is one (``make_accelerator``), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def fast_bf16_available() -> bool:
    """bf16 autocast pays off on GPUs that support it and CPUs with bf16 matmul instructions."""
    return bf16_support(run_device())[0]


def bf16_support(device: torch.device) -> tuple[bool, str]:
    """(whether bf16 autocast pays off on ``device``, why): on a GPU that supports bf16, and on a CPU with bf16
    matmul instructions (avx512_bf16 or amx_bf16 in /proc/cpuinfo); elsewhere bf16 matmul is slower than fp32."""
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return True, f"{torch.cuda.get_device_name(device)} supports bf16"
        return False, f"{torch.cuda.get_device_name(device)} has no bf16 support"
    found = sorted(set(cpu_flags()) & {"avx512_bf16", "amx_bf16"})
    if found:
        return True, f"this CPU has {' and '.join(found)}"
    return False, "this CPU has no avx512_bf16 or amx_bf16 (bf16 matmul is slower than fp32 here)"


def cpu_flags() -> list[str]:
    """The CPU's feature flags from /proc/cpuinfo (none where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return line.split(":", 1)[1].split()
    except OSError:
        pass
    return []


def exit_process(code: int) -> None:
    """End a training script with ``code``. A rank of a multi-process run leaves through ``os._exit`` once its
    output is flushed: every file is written and closed by then, and the interpreter's teardown of gloo's
    threads aborted finished ranks now and then ("terminate called without an active exception", exit -6),
    failing runs that had succeeded."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)
