"""The in-process checks of ``make bench-gpu-quick``, on this trainer's own run of a bench case (the base preset
on a GPU): host-device syncs per steady-state step, where a step's device time goes, tokens/s per micro-batch size.

* ``syncs``: a few optimizer steps (the loop's ``train_step`` and ``optimizer_step``, after warm-up) with
  ``torch.cuda.set_sync_debug_mode("warn")``: CUDA warns ("called a synchronizing CUDA operation") at every
  op that makes the host wait, and each warning is counted with the Python line that caused it. On the CPU
  the same function counts with ``SyncCounter`` (utils/bench/syncs.py) instead. Passes at 0.
* ``profile``: torch.profiler with CUDA activity over a few steps; each device kernel's time goes to attention,
  matmul, loss, optimizer or other by its name and the ops that launched it (``category``, a pure function of
  names); idle is the steps' wall time less the busy device time (one stream: the kernels' durations add up).
  On the CPU the ops' self times stand in for kernel times.
* ``tokens``: tokens/s at micro-batches of 4k, 16k and 64k tokens (one packed micro-batch per step), a short
  timed loop between two ``torch.cuda.synchronize`` calls, with peak GPU memory.

``torch.cuda.synchronize`` is called only outside the counted window (it is itself a synchronizing call) and
around every timed or profiled window, so the host's clock brackets the device's work.
"""
from __future__ import annotations

import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import torch
from torch.profiler import ProfilerActivity

from utils.bench.gpu_runner import Check
from utils.bench.profile import OPTIMIZER_REGION, profiled_steps
from utils.bench.syncs import SyncCounter, named_counts
from utils.train.loop import optimizer_step, train_step

SYNC_WARNING = "called a synchronizing CUDA operation"
"""The warning CUDA's sync debug mode raises (c10/cuda/CUDAFunctions.cpp, warn_or_error_on_sync)."""
CATEGORIES = ("attention", "matmul", "loss", "optimizer", "other", "idle")
MICRO_TOKENS = (4096, 16384, 65536)
_KEYS = {  # lower-case parts of kernel or op names, tried in this order (attention's own GEMMs are attention)
    "optimizer": ("adam", "multi_tensor_apply", "_foreach_", "clip_grad", OPTIMIZER_REGION),
    "attention": ("flash", "fmha", "scaled_dot_product", "varlen", "attention"),
    "loss": ("cross_entropy", "log_softmax", "nll_loss"),
    "matmul": ("gemm", "cutlass", "cublas", "nvjet", "xmma", "aten::mm", "aten::addmm", "aten::bmm",
               "aten::baddbmm", "matmul"),
}


def _one_step(run) -> int:
    """One optimizer step of ``run``, as the loop runs it; its tokens."""
    batches = run.planner.next_step()
    train_step(run, batches)
    optimizer_step(run)
    return batches.num_tokens


def _synchronize(cuda: bool) -> None:
    if cuda:
        torch.cuda.synchronize()


def _on_cuda(run, cuda: bool | None) -> bool:
    return run.accelerator.device.type == "cuda" if cuda is None else cuda


# ------------------------------------------------------------------------------------- syncs
def syncs_per_step(run, steps: int = 3, warmup: int = 1, cuda: bool | None = None) -> tuple[float, Counter]:
    """Host-device syncs per steady-state optimizer step of ``run`` and where they came from: CUDA's sync debug
    mode on a GPU (``cuda``), the dispatch-mode counter elsewhere."""
    cuda = _on_cuda(run, cuda)
    for _ in range(warmup):
        _one_step(run)
    counts: Counter = Counter()
    if not cuda:
        counter = SyncCounter()
        with counter:
            for _ in range(steps):
                _one_step(run)
        for by_reason in counter.by_step.values():
            counts.update(by_reason)
        return sum(counts.values()) / steps, counts
    previous = torch.cuda.get_sync_debug_mode()
    torch.cuda.synchronize()  # a sync itself: before the counted window
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            for _ in range(steps):
                _one_step(run)
        finally:
            torch.cuda.set_sync_debug_mode(previous)
    torch.cuda.synchronize()
    counts.update(f"{Path(w.filename).name}:{w.lineno}" for w in caught if SYNC_WARNING in str(w.message))
    return sum(counts.values()) / steps, counts


def check_syncs(run, steps: int = 3) -> Check:
    per_step, counts = syncs_per_step(run, steps)
    how = "torch.cuda.set_sync_debug_mode('warn')" if _on_cuda(run, None) else "SyncCounter (CPU)"
    return Check("syncs", per_step == 0, f"{per_step:.2f} host-device syncs per steady-state step over {steps} "
                 f"step(s), {how}: {named_counts(counts)}", {"per_step": per_step, "where": dict(counts)})


# ------------------------------------------------------------------------------------- profile
def category(name: str, ancestors: Sequence[str] = ()) -> str:
    """attention, matmul, loss, optimizer or other, for a device kernel (or CPU op) ``name`` launched under the
    ops and regions ``ancestors`` (innermost first)."""
    names = [n.lower() for n in (name, *ancestors)]
    for group, keys in _KEYS.items():
        if any(key.lower() in n for n in names for key in keys):
            return group
    return "other"


def split_time(items: Iterable[tuple[str, Sequence[str], float]], wall_us: float) -> dict[str, float]:
    """Microseconds per ``CATEGORIES`` entry of (name, ancestors, busy microseconds) items; idle is the wall time
    they leave."""
    out = dict.fromkeys(CATEGORIES, 0.0)
    for name, ancestors, us in items:
        out[category(name, ancestors)] += us
    out["idle"] = max(0.0, wall_us - sum(out.values()))
    return out


def _ancestors(event) -> list[str]:
    names, parent = [event.name], event.cpu_parent
    while parent is not None:
        names.append(parent.name)
        parent = parent.cpu_parent
    return names


def device_kernels(events) -> list[tuple[str, list[str], float]]:
    """(kernel name, the op that launched it and its ancestors, microseconds) for each device kernel the
    profiler linked to a CPU event (``FunctionEvent.kernels``: ``Kernel(name, device, duration)``)."""
    return [(k.name, _ancestors(e), float(k.duration)) for e in events for k in e.kernels]


def cpu_ops(events) -> list[tuple[str, list[str], float]]:
    """(op name, ancestors, self CPU microseconds) of each aten op: the CPU's stand-in for kernel times."""
    return [(e.name, _ancestors(e)[1:], float(e.self_cpu_time_total)) for e in events if e.name.startswith("aten::")]


def profile_split(run, steps: int = 2, warmup: int = 1, cuda: bool | None = None) -> dict[str, float]:
    """Milliseconds per step of ``run`` in each of ``CATEGORIES`` (and ``step`` for the wall time)."""
    cuda = _on_cuda(run, cuda)
    for _ in range(warmup):
        _one_step(run)
    activities = [ProfilerActivity.CPU, *([ProfilerActivity.CUDA] if cuda else [])]
    prof, wall = profiled_steps(run, steps, activities, lambda: _synchronize(cuda))
    events = prof.events()
    split = split_time(device_kernels(events) if cuda else cpu_ops(events), wall * 1e6)
    return {**{k: v / 1e3 / steps for k, v in split.items()}, "step": wall * 1e3 / steps}


def profile_line(split: dict[str, float]) -> str:
    return ", ".join(f"{k} {split[k]:,.1f} ms ({split[k] / split['step']:.0%})" for k in CATEGORIES) + \
        f" of a {split['step']:,.1f} ms step"


# ------------------------------------------------------------------------------------- tokens/s
def tokens_per_second(run, steps: int = 3, warmup: int = 2, cuda: bool | None = None) -> dict:
    """Tokens/s of ``run`` over ``steps`` timed optimizer steps after ``warmup``, and peak GPU memory."""
    cuda = _on_cuda(run, cuda)
    for _ in range(warmup):
        _one_step(run)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    _synchronize(cuda)
    start = time.perf_counter()
    tokens = sum(_one_step(run) for _ in range(steps))
    _synchronize(cuda)
    seconds = time.perf_counter() - start
    return {"tokens_per_s": tokens / seconds, "step_ms": seconds * 1e3 / steps, "tokens": tokens,
            "peak_gpu_mb": torch.cuda.max_memory_allocated() / 2 ** 20 if cuda else None}


def size_name(tokens: int) -> str:
    """``16k`` for 16,384 tokens, ``96 tokens`` for a size that is no multiple of 1,024."""
    return f"{tokens // 1024}k" if tokens % 1024 == 0 else f"{tokens} tokens"


def tokens_line(micro: int, figures: dict) -> str:
    if "error" in figures:
        return f"{size_name(micro)}: {figures['error']}"
    memory = f", peak GPU {figures['peak_gpu_mb']:,.0f} MiB" if figures.get("peak_gpu_mb") else ""
    return f"{size_name(micro)}: {figures['tokens_per_s']:,.0f} tok/s ({figures['step_ms']:,.0f} ms/step{memory})"
