"""A copying probe: can the model predict a token run it has just seen (does it have induction heads)?

A run of random tokens is shown twice. A model that can copy from its context predicts the second
occurrence far better than the first (loss near 0 for a trained LM); one that cannot scores both alike.
Copying is what task families such as "repeat the words" or "reverse the words" need, so a base model
without it makes SFT on them slow (docs/TROUBLESHOOTING.md, "Poor generation quality"). The runs are
arbitrary tokens: a small model can learn to copy ordinary words while this probe stays flat (the demo's
tiny preset after 4x the pre-training tokens), so a flat probe is a warning, not a verdict.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class CopyProbe:
    first_loss: float
    """Mean next-token loss over the first occurrence of the runs (nats; chance is ln(vocab))."""
    second_loss: float
    """The same over the second occurrence: far lower when the model copies."""

    @property
    def copies(self) -> bool:
        return self.second_loss < 0.5 * self.first_loss


@torch.no_grad()
def copy_probe(model, tokenizer, runs: int = 8, length: int = 24, seed: int = 0) -> CopyProbe:
    """Loss on the first vs the second occurrence of ``runs`` random runs of ``length`` ordinary tokens."""
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    generator = torch.Generator().manual_seed(seed)
    picks = ordinary[torch.randint(len(ordinary), (runs, length), generator=generator)]
    ids = torch.cat([picks, picks], dim=1)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    logits = model(input_ids=ids.to(device)).logits.float()
    model.train(was_training)
    nll = torch.nn.functional.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:].to(device),
                                            reduction="none")
    # position t predicts token t+1: the first run's tokens 1..L-1, the second run's tokens L+1..2L-1
    return CopyProbe(nll[:, :length - 1].mean().item(), nll[:, length:].mean().item())
