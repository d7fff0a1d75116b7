"""Fold gradient accumulation into larger micro-batches where the device's free memory holds them.

A config's step is ``gradient_accumulation_steps`` micro-batches of ``micro_batch_tokens`` on each process: the
tokens per optimizer step are a training setting, the split into micro-batches is only how the device gets them.
A GPU sits mostly idle on the 1,024-token micro-batches that suit a CPU, so on the CUDA path
(``training_params.fold_micro_batches``, ``auto``) the trainer runs the step as ``accumulation / f`` micro-batches of
``f x micro_batch_tokens``: ``f`` is the largest divisor of the accumulation whose micro-batch the free memory holds,
by the estimate below. The tokens per step stay; the packing differs (larger bins waste less room), so the split is
part of the data order: each checkpoint records it (``record``) and a resume keeps it, whatever memory it finds.

The estimate (bytes per token of one micro-batch, what backward keeps of each decoder layer) is deliberately
coarse: the inputs of the attention and MLP projections and of the norms, the attention output and the MLP's
activations, in the autocast dtype, plus the float32 residual stream; with gradient checkpointing only each layer's
input and one layer's worth. The weights, their gradients and AdamW's two moments are set aside first, and only
``MEMORY_SHARE`` of what is left is planned for.
"""
from __future__ import annotations

import dataclasses
import os

import torch

from utils.checkpoint.record import TrainingState
from utils.common.errors import UserError
from utils.train.config import TrainingParams

MEMORY_SHARE = 0.6
"""The share of the free memory (after weights, gradients and optimizer state) the folded micro-batch may fill:
the rest is for the loss chunks, the allocator's fragmentation and the estimate's error."""


def free_memory(device: torch.device) -> int:
    """Bytes free on ``device``: the GPU's (``torch.cuda.mem_get_info``), else the host's available memory."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def bytes_per_token(config, autocast_bytes: int, checkpointing: bool) -> int:
    """Activation bytes one token of a micro-batch keeps for backward (the estimate of the module docstring)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    hidden, layers = config.hidden_size, config.num_hidden_layers
    inner = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * hidden
    layer = autocast_bytes * (10 * hidden + 3 * inner) + 2 * 4 * hidden
    kept = autocast_bytes * hidden * layers + layer if checkpointing else layer * layers
    return kept + 4 * hidden  # the final norm's input


def state_bytes(model, device: torch.device, shards: int) -> int:
    """Bytes of the weights not yet on ``device``, the gradients and AdamW's moments (per shard)."""
    total = 0
    for p in model.parameters():
        total += p.numel() * p.element_size() if p.device.type != device.type else 0
        total += p.numel() * 4 * 3 if p.requires_grad else 0  # gradient, exp_avg, exp_avg_sq in float32
    return total // max(1, shards)


@dataclasses.dataclass(frozen=True)
class Split:
    """How one optimizer step reaches the device on each process."""

    micro_batch_tokens: int | None
    gradient_accumulation_steps: int
    factor: int
    """Configured micro-batches per folded one (1: as configured)."""
    why: str
    """The run plan's reason."""
    params: TrainingParams | None = None
    """The training parameters with this split: the planner's view of the run."""
    record: dict | None = None
    """What a checkpoint keeps: the global shape of a step (micro-batches over every process, their tokens)."""


def choose_split(params: TrainingParams, model, device: torch.device, world: int, shards: int,
                 resumed: TrainingState | None, on_cuda_path: bool) -> Split:
    """The split of this run: the one of the checkpoint it resumes (``resumed``: its training state), else folded
    as far as the free memory allows where folding is on, else as configured."""
    split = _choose(params, model, device, world, shards, resumed, on_cuda_path)
    # a copy with this split: the config stays as given (resume compares it with the checkpoint's)
    planned = dataclasses.replace(params, micro_batch_tokens=split.micro_batch_tokens,
                                  gradient_accumulation_steps=split.gradient_accumulation_steps)
    return dataclasses.replace(split, params=planned, record={
        "micro_batch_tokens": split.micro_batch_tokens,
        "micro_batches_per_step": split.gradient_accumulation_steps * world, "factor": split.factor})


def _choose(params: TrainingParams, model, device: torch.device, world: int, shards: int,
            resumed: TrainingState | None, on_cuda_path: bool) -> Split:
    tokens, accum = params.micro_batch_tokens, params.gradient_accumulation_steps
    if resumed is not None:
        saved = resumed.record.get("micro_batch_split")
        if saved is None or saved["factor"] == 1:  # drawn as configured (or recorded before splits were): resume's
            return Split(tokens, accum, 1, "as configured: the checkpoint records no folded split")  # own checks
        return _kept(saved, world)
    setting = params.fold_micro_batches
    if setting is False or (setting == "auto" and not on_cuda_path):
        why = "training_params.fold_micro_batches" + (" (auto: off on the CPU)" if setting == "auto" else "")
        return Split(tokens, accum, 1, why)
    if tokens is None:
        return Split(tokens, accum, 1, "fold_micro_batches needs micro_batch_tokens (examples per micro-batch set)")
    if accum == 1:
        return Split(tokens, accum, 1, "fold_micro_batches: nothing to fold at gradient_accumulation_steps 1 "
                     "(raise micro_batch_tokens for larger micro-batches; it raises the tokens per step)")
    autocast = 2 if params.bf16 or params.fp16 else 4
    per_token = bytes_per_token(model.config, autocast, bool(params.gradient_checkpointing))
    budget = int((free_memory(device) - state_bytes(model, device, shards)) * MEMORY_SHARE)
    fits = max(0, budget) // per_token
    factor = max([f for f in range(1, accum + 1) if accum % f == 0 and f * tokens <= fits] or [1])
    gib = budget / MEMORY_SHARE / 2 ** 30
    return Split(tokens * factor, accum // factor, factor,
                 f"fold_micro_batches: {factor} configured micro-batches of {tokens:,} per device pass; "
                 f"{gib:.1f} GiB free after the weights and optimizer state hold about {fits:,} tokens at "
                 f"{per_token / 1024:,.0f} KiB per token (estimate)")


def _kept(saved: dict, world: int) -> Split:
    """The checkpoint's split on ``world`` processes: its micro-batches per step shared out, or refused."""
    per_step, folded = saved["micro_batches_per_step"], saved["micro_batch_tokens"]
    if per_step % world:
        raise UserError(f"the checkpoint's steps were drawn as {per_step} micro-batch(es) of {folded} tokens "
                        f"(training_params.fold_micro_batches); {world} processes cannot share them — resume on "
                        f"a number of processes dividing {per_step}, or start a new --output_dir")
    return Split(folded, per_step // world, saved["factor"],
                 f"kept from the checkpoint ({saved['factor']} configured micro-batches per device pass)")
