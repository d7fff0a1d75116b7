"""The loss: cross-entropy summed over supervised positions only.

Only the hidden states of supervised positions go through the output head, in chunks,
so the [tokens x vocab] logits of prompt tokens are never built. The module returns a
SUM; the training loop divides by the supervised tokens of the whole optimizer step.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

from utils.common.labels import IGNORE
from utils.model.modeling import decoder_and_head

CHUNK_ROWS = 4096


class SupervisedLoss(torch.nn.Module):
    """Wraps a causal LM so that DDP/FSDP see one forward: packed batch in, (loss sum, per-source sums) out."""

    def __init__(self, model: torch.nn.Module, num_sources: int = 1):
        super().__init__()
        self.model = model
        self.num_sources = num_sources

    def forward(self, input_ids, position_ids, targets, source_ids, cu_seq_lens=None):
        body, head = decoder_and_head(self.model)
        hidden = body(input_ids=input_ids, position_ids=position_ids, use_cache=False,
                      cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens).last_hidden_state
        keep = targets != IGNORE
        hidden, targets, sources = hidden[keep], targets[keep], source_ids[keep]
        per_token = []
        for start in range(0, targets.numel(), CHUNK_ROWS):
            logits = head(hidden[start:start + CHUNK_ROWS]).float()
            per_token.append(F.cross_entropy(logits, targets[start:start + CHUNK_ROWS], reduction="none"))
        losses = torch.cat(per_token) if per_token else hidden.new_zeros(0, dtype=torch.float32)
        by_source = torch.zeros(self.num_sources, dtype=torch.float32, device=losses.device)
        by_source.index_add_(0, sources, losses.detach())
        # sum() of an empty tensor keeps the graph connected, so DDP sees every parameter used
        return losses.sum() + 0.0 * hidden.sum(), by_source


@torch.no_grad()
def loss_sums(loss_module: SupervisedLoss, batches: Iterable, num_sources: int, device,
              autocast: Callable[[], contextlib.AbstractContextManager]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss and supervised-target count per source over packed batches: the one validation loss.

    Training (each rank its share, then reduced) and evaluation both call it. The sums are float32 on
    ``device``, as the per-batch sums are, so the numbers do not depend on where the model runs.
    """
    sums = torch.zeros(num_sources, device=device)
    counts = torch.zeros(num_sources, device=device)
    for batch in batches:
        batch = batch.to(device)
        with autocast():
            _, by_source = loss_module(batch.input_ids, batch.position_ids, batch.targets, batch.source_ids,
                                       batch.cu_seq_lens)
        sums += by_source[:num_sources]
        counts += torch.bincount(batch.source_ids[batch.targets != IGNORE], minlength=num_sources).float()
    return sums, counts
