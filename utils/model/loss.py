"""The loss: cross-entropy summed over supervised positions only.

Only the hidden states of supervised positions go through the output head, in chunks,
so the [tokens x vocab] logits of prompt tokens are never built. The module returns a
SUM; the training loop divides by the supervised tokens of the whole optimizer step.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

from utils.model.attention import bounds_mask, uses_packed_attention
from utils.model.modeling import decoder_and_head

CHUNK_ROWS = 4096


class SupervisedLoss(torch.nn.Module):
    """Wraps a causal LM so that DDP/FSDP see one forward: packed batch in, (loss sum, per-source sums) out."""

    def __init__(self, model: torch.nn.Module, num_sources: int = 1):
        super().__init__()
        self.model = model
        self.num_sources = num_sources

    def forward(self, input_ids, position_ids, supervised, targets, sources, cu_seq_lens=None):
        """``supervised``: the positions of the row with a target, ``targets`` and ``sources`` theirs (the packer
        finds them on the host: a boolean mask here would make a GPU's host wait for its count)."""
        body, head = decoder_and_head(self.model)
        mask = bounds_mask(input_ids.device) if cu_seq_lens is not None and uses_packed_attention(body) else None
        hidden = body(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=False,
                      cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens).last_hidden_state
        hidden = hidden.flatten(0, 1).index_select(0, supervised)
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
    ``device``, as the per-batch sums are, so the numbers do not depend on where the model runs; the counts
    are made on the host, where the packer knows them.
    """
    sums = torch.zeros(num_sources, device=device)
    counts = np.zeros(num_sources, dtype=np.int64)
    for batch in batches:
        counts += batch.supervised_per_source(num_sources)
        with autocast():
            _, by_source = loss_module(*batch.to(device).loss_inputs())
        sums += by_source[:num_sources]
    return sums, torch.from_numpy(counts).float().to(device)
