"""The optimizer and the learning-rate schedule of both training stages."""
from __future__ import annotations

import math

import torch
from torch.distributed.tensor import DTensor

from utils.train.config import TrainingParams


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


def build_optimizer(model: torch.nn.Module, params: TrainingParams, total_steps: int):
    """AdamW (decay on matrices only) and its schedule over ``total_steps`` (``lr_lambda``)."""
    decay, no_decay = [], []
    for _name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": params.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    foreach_ok = all(p.device.type in ("cuda", "cpu") for p in decay + no_decay)
    # fused: one kernel per tensor, ~5x faster than foreach on CPU (docs/BENCHMARKS.md); plain tensors and FSDP2's
    # DTensor shards (which run it on their local shard)
    fused_ok = foreach_ok and all(p.is_floating_point() and type(p.data) in (torch.Tensor, DTensor)
                                  for p in decay + no_decay)
    optimizer = torch.optim.AdamW(groups, lr=params.learning_rate, betas=(params.adam_beta1, params.adam_beta2),
                                  eps=params.adam_epsilon, fused=fused_ok or None,
                                  foreach=None if fused_ok else foreach_ok)
    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(params, total_steps))
