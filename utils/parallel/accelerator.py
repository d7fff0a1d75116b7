"""The accelerate set-up: one process or DDP (chosen by ``accelerate launch`` or torchrun outside); sharded runs
use the trainer's own FSDP2 (fsdp.py) on top of it."""
from __future__ import annotations

import functools

import torch
import torch.distributed as dist
from accelerate import Accelerator

from utils.common.errors import Stopped, UserError


def make_accelerator(mixed_precision: str, log_with: list | None = None) -> Accelerator:
    """An Accelerator for ``mixed_precision`` ("bf16", "fp16" or "no") on the GPU, or on CPU without one, logging
    to the trackers ``log_with`` (started later by ``init_trackers``)."""
    if mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError("training_params.fp16: float16 training needs a GPU; use bf16 on CPU")
    # cpu=True also makes accelerate set up gloo when torchrun starts several CPU processes
    return Accelerator(mixed_precision=mixed_precision, cpu=not torch.cuda.is_available(), log_with=log_with)


def fast_bf16_available() -> bool:
    """bf16 autocast pays off on GPUs that support it and CPUs with bf16 matmul instructions."""
    if torch.cuda.is_available():
        return torch.cuda.is_bf16_supported()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            flags = handle.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def closes_process_group(stage):
    """Decorate a stage so that the process group torchrun opened is destroyed when the stage ends (done, or
    stopped by a signal after its checkpoint). Left to the interpreter's exit, gloo's threads can abort a rank
    that has finished ("terminate called without an active exception", exit -6), failing a run that succeeded."""

    @functools.wraps(stage)
    def run(*args, **kwargs):
        try:
            result = stage(*args, **kwargs)
        except Stopped:
            _destroy_process_group()
            raise
        _destroy_process_group()
        return result

    return run


def _destroy_process_group() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
