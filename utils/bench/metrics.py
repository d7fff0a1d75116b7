"""What the throughput benchmark measures: model FLOPs, the matmul peak, and per-run window statistics.

Every trainer reports the same per-step records (wall-clock end time, real tokens, supervised
tokens, computed positions including padding, loss); the statistics are taken over the steps
after the warm-up, so start-up, first allocations and any compilation are excluded.

Model FLOPs (counted the same way for every trainer, so MFU ratios equal throughput ratios):

* matmul parameters N = the weights of every ``nn.Linear`` (attention, MLP, LoRA, the output head;
  a tied embedding counts once, as the head; the embedding lookup is not a matmul);
* per real token: 2N forward + 2N backward to the activations + 2N_trainable for weight gradients,
  i.e. 6N for full fine-tuning and 4N + 2N_trainable with frozen (LoRA) weights;
* attention scores and values: 12 x layers x (heads x head_dim) x n^2 per example of n tokens
  (the PaLM convention: no discount for the causal mask; packed examples attend only to themselves).

Work a trainer skips (prompt positions through the head) or wastes (padding) is not counted:
MFU measures useful model FLOPs per second.
"""
from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class ModelShape:
    """What the FLOP count needs to know about a model."""

    matmul_params: int
    trainable_matmul_params: int
    layers: int
    attention_width: int          # heads x head_dim

    def step_flops(self, example_lengths: np.ndarray) -> float:
        """Model FLOPs of one training pass over examples of these lengths (real tokens only)."""
        lengths = np.asarray(example_lengths, dtype=np.float64)
        dense = (4 * self.matmul_params + 2 * self.trainable_matmul_params) * lengths.sum()
        attention = 12 * self.layers * self.attention_width * float((lengths ** 2).sum())
        return dense + attention


def model_shape(model: torch.nn.Module) -> ModelShape:
    """Count the matmul parameters of ``model`` (peft-wrapped or plain)."""
    seen, total, trainable = set(), 0, 0
    for module in model.modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            total += module.weight.numel()
            trainable += module.weight.numel() if module.weight.requires_grad else 0
    config = model.config if hasattr(model, "config") else model.get_base_model().config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return ModelShape(total, trainable, config.num_hidden_layers, heads * head_dim)


def matmul_peak_flops(size: int = 2048, dtype: torch.dtype = torch.float32, seconds: float = 3.0,
                      device: str = "cpu") -> float:
    """Best FLOP/s of a square ``size`` matmul over about ``seconds`` (the MFU denominator)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if a.is_cuda else (lambda: None)
    torch.mm(a, b)  # warm-up: thread pool, packing buffers, kernel selection
    sync()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        torch.mm(a, b)
        sync()
        best = max(best, 2 * size ** 3 / (time.perf_counter() - start))
    return best


@dataclass
class StepRecord:
    """One optimizer step as a trainer saw it."""

    end_s: float            # wall clock at the end of the step (perf_counter)
    tokens: int             # real (non-pad) tokens
    supervised: int         # positions that carry a loss
    slots: int              # positions computed, padding included
    flops: float            # model FLOPs (ModelShape.step_flops)
    loss: float | None      # mean loss per supervised token of the step
    cpu_s: float = float("nan")  # process CPU time at the end of the step (time.process_time)


@dataclass
class WindowStats:
    """A run's numbers over the steps after the warm-up."""

    steps: int
    seconds: float
    tokens_per_s: float
    supervised_per_s: float
    padding_fraction: float
    model_flops_per_s: float
    mean_loss: float | None
    median_step_s: float
    cpu_seconds: float            # process CPU time over the window (all threads)
    supervised_per_cpu_s: float   # robust to other jobs on the machine (with one thread: to its load)

    def as_dict(self) -> dict:
        return asdict(self)


def window_stats(records: list[StepRecord], warmup: int) -> WindowStats:
    """Statistics over records[warmup:], timed from the end of step ``warmup``.

    Records may be sparse (only some steps have an end time); steps without one carry ``end_s`` NaN
    and are still counted in the token totals.
    """
    if warmup < 1 or len(records) <= warmup:
        raise ValueError(f"need more than {warmup} steps to skip {warmup} warm-up step(s); got {len(records)}")
    window = records[warmup:]
    seconds = window[-1].end_s - records[warmup - 1].end_s
    if not np.isfinite(seconds) or seconds <= 0:
        raise ValueError("the first and last steps of the window need end times")
    tokens = sum(r.tokens for r in window)
    slots = sum(r.slots for r in window)
    losses = [r.loss for r in window if r.loss is not None]
    ends = np.array([records[warmup - 1].end_s] + [r.end_s for r in window])
    gaps = np.diff(ends[np.isfinite(ends)])
    timed_steps = np.diff(np.flatnonzero(np.isfinite(ends)))
    cpu = window[-1].cpu_s - records[warmup - 1].cpu_s
    supervised = sum(r.supervised for r in window)
    return WindowStats(
        steps=len(window), seconds=seconds, tokens_per_s=tokens / seconds,
        supervised_per_s=supervised / seconds,
        padding_fraction=1.0 - tokens / slots if slots else 0.0,
        model_flops_per_s=sum(r.flops for r in window) / seconds,
        mean_loss=float(np.mean(losses)) if losses else None,
        median_step_s=float(np.median(gaps / timed_steps)), cpu_seconds=cpu,
        supervised_per_cpu_s=supervised / cpu if cpu > 0 else float("nan"))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB.

    Linux's ``VmHWM`` (the high-water mark of this process's own memory map): ``ru_maxrss`` of a process
    started by fork/vfork + exec begins at its parent's peak, so every benchmark child reported at least the
    parent's. ``ru_maxrss`` (KiB on Linux) is the fallback elsewhere.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
