"""Training parameters shared by pre-training/CPT and SFT, and what is derived from them."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from utils.parallel.accelerator import fast_bf16_available

SCHEDULERS = ("cosine", "linear", "constant")
"""Learning-rate decays after warm-up (``lr_lambda``); the schema lists the same names."""


@dataclass
class TrainingParams:
    learning_rate: float = 3e-4
    num_train_epochs: float | None = None
    max_steps: int | None = None
    per_device_train_batch_size: int | None = None
    micro_batch_tokens: int | None = None
    gradient_accumulation_steps: int = 1
    warmup_steps: int = 0
    scheduler: str = "cosine"
    min_lr_ratio: float = 0.1
    weight_decay: float = 0.0
    adam_beta1: float = 0.9
    adam_beta2: float = 0.95
    adam_epsilon: float = 1e-8
    max_grad_norm: float = 1.0
    save_steps: int = 0
    eval_steps: int = 0
    logging_steps: int = 10
    save_total_limit: int | None = 2
    eval_max_batches: int | None = None
    seed: int = 1234
    bf16: bool | str = "auto"
    fp16: bool = False
    gradient_checkpointing: bool = False

    def __post_init__(self) -> None:
        if (self.per_device_train_batch_size is None) == (self.micro_batch_tokens is None):
            raise ValueError("set exactly one of per_device_train_batch_size and micro_batch_tokens")
        if self.bf16 is True and self.fp16:
            raise ValueError("bf16 and fp16 are exclusive")
        if self.bf16 == "auto":
            self.bf16 = not self.fp16 and fast_bf16_available()

    def micro_batches_per_step(self, world_size: int) -> int:
        """Micro-batches in one optimizer step, over all ranks."""
        return self.gradient_accumulation_steps * world_size

    def mixed_precision(self) -> str:
        """accelerate's name for the precision: "bf16", "fp16" or "no"."""
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "no"

    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else None


def lr_lambda(params: TrainingParams, total_steps: int):
    """Multiplier of the peak learning rate at each step: linear warm-up, then decay."""
    warmup, floor = params.warmup_steps, params.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if params.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if params.scheduler == "linear":
            return floor + (1 - floor) * (1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(model: torch.nn.Module, params: TrainingParams):
    """AdamW (decay on matrices only) and its LambdaLR schedule factory."""
    decay, no_decay = [], []
    for _name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": params.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    foreach_ok = all(p.device.type in ("cuda", "cpu") for p in decay + no_decay)
    # fused: one kernel per tensor, ~5x faster than foreach on CPU (docs/BENCHMARKS.md); plain tensors only
    fused_ok = foreach_ok and all(p.is_floating_point() and type(p.data) is torch.Tensor for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=params.learning_rate, betas=(params.adam_beta1, params.adam_beta2),
                             eps=params.adam_epsilon, fused=fused_ok or None,
                             foreach=None if fused_ok else foreach_ok)
