"""Host-device syncs of a training step, counted on any device.

On a GPU the host queues kernels ahead of the device; an op whose result the host must read (a scalar, a
data-dependent shape, a copy back to the host) makes it wait until the device has caught up, and the device then
idles while the host queues the next kernels. ``SyncCounter`` is a dispatch mode that counts those ops by name as
they are dispatched, so a CPU run (the CUDA path's code under ``SFT_EMULATE_CUDA_KERNELS``) shows the syncs a GPU
run would have: ``aten._local_scalar_dense`` (``.item()``, ``bool(tensor)``, ``int(tensor)``), ``nonzero``,
``is_nonzero``, ``masked_select``, ``equal``, ``unique``, ``bincount``, boolean-mask indexing and index_put,
``repeat_interleave`` without ``output_size``, and copies from a CUDA tensor to the host. What it cannot see on
a CPU: copies the host makes without an op (``tolist`` of a CPU tensor), which cost nothing there. On a GPU,
``torch.cuda.set_sync_debug_mode`` is the ground truth.

``counting_fit_syncs`` trains a run under the counter and says how many syncs each step made; steps that log,
evaluate or write a checkpoint read numbers back on purpose and are reported apart.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

_ALWAYS = {"_local_scalar_dense", "nonzero", "nonzero_numpy", "argwhere", "is_nonzero", "masked_select", "equal",
           "_unique", "_unique2", "unique_dim", "unique_consecutive", "unique_dim_consecutive", "bincount", "histc",
           "masked_scatter"}
_BOOL = (torch.bool, torch.uint8)


def sync_reason(func, args, kwargs) -> str | None:
    """The name under which ``func(*args, **kwargs)`` would make a CUDA host wait, or None."""
    name = func.overloadpacket.__name__.rstrip("_")
    if name in _ALWAYS:
        return name
    if name in ("index", "index_put") and any(torch.is_tensor(i) and i.dtype in _BOOL for i in args[1] or ()):
        return f"{name} with a boolean mask"
    if name == "repeat_interleave" and (kwargs or {}).get("output_size") is None and (  # length: the repeats' sum
            func._overloadname == "Tensor" or any(torch.is_tensor(a) and a.dim() > 0 for a in args[1:])):
        return "repeat_interleave without output_size"
    if name in ("_to_copy", "copy"):
        src = args[1] if name == "copy" else args[0]
        dst_cpu = (kwargs or {}).get("device", None) == torch.device("cpu") if name == "_to_copy" \
            else args[0].device.type == "cpu"
        if torch.is_tensor(src) and src.is_cuda and dst_cpu:
            return "copy from the GPU to the host"
    return None


class SyncCounter(TorchDispatchMode):
    """Counts the ops that would sync a CUDA host, per step (``step`` is set by the caller)."""

    def __init__(self) -> None:
        super().__init__()
        self.step = 0
        self.by_step: dict[int, Counter] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        reason = sync_reason(func, args, kwargs)
        if reason is not None:
            self.by_step.setdefault(self.step, Counter())[reason] += 1
        return func(*args, **(kwargs or {}))


@dataclass
class FitSyncs:
    """Syncs per step of a run: in steady-state steps (no log line, evaluation or checkpoint) and in the others."""

    steady: dict[int, Counter] = field(default_factory=dict)
    bookkeeping: dict[int, Counter] = field(default_factory=dict)
    micro_batches: int = 0
    """Micro-batches of this rank in the steady-state steps."""

    def per_micro_batch(self) -> float:
        return sum(sum(c.values()) for c in self.steady.values()) / max(1, self.micro_batches)

    def describe(self) -> str:
        steady = Counter()
        for counts in self.steady.values():
            steady.update(counts)
        booked = Counter()
        for counts in self.bookkeeping.values():
            booked.update(counts)
        return (f"host-device syncs: {self.per_micro_batch():.2f} per micro-batch in {len(self.steady)} steady-state "
                f"step(s) ({named_counts(steady)}); {sum(booked.values())} in {len(self.bookkeeping)} "
                "log/eval/checkpoint step(s)")


def named_counts(counts: Counter) -> str:
    """``3 x nonzero, 1 x _local_scalar_dense``, most frequent first; ``none`` when empty."""
    return ", ".join(f"{n} x {name}" for name, n in counts.most_common()) or "none"


def bookkeeping_step(step: int, params, total_steps: int) -> bool:
    """Whether optimizer step ``step`` (0: the evaluation before the first) logs, evaluates or saves."""
    due = lambda every: every > 0 and step % every == 0  # noqa: E731
    return step in (0, 1, total_steps) or due(params.logging_steps) or due(params.eval_steps) or \
        due(params.save_steps)


@contextmanager
def counting_fit_syncs(loop_module, run):
    """Within the block the training loop of ``run`` (``loop_module``: utils.train.loop) runs under a
    ``SyncCounter`` whose step follows the loop's; yields the ``FitSyncs`` filled in when the block ends."""
    counter, result = SyncCounter(), FitSyncs()
    real_step = loop_module.train_step
    micro = {}

    def marked(run_, batches, packed=None):
        counter.step += 1
        micro[counter.step] = len(batches.for_rank(run_.accelerator.process_index, run_.accelerator.num_processes))
        return real_step(run_, batches, packed)

    loop_module.train_step = marked
    try:
        with counter:
            yield result
    finally:
        loop_module.train_step = real_step
    for step in range(0, counter.step + 1):
        counts = counter.by_step.get(step, Counter())
        if bookkeeping_step(step, run.params, run.total_steps):
            result.bookkeeping[step] = counts
        else:
            result.steady[step] = counts
            result.micro_batches += micro.get(step, 0)
