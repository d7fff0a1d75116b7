"""The copying probe tells a model that copies from its context from one that cannot."""
from __future__ import annotations

import torch

from utils.model.probes import copy_probe


class _Lookup(torch.nn.Module):
    """Predicts, at each position, the token that followed the previous occurrence of the current one."""

    def __init__(self, vocab: int) -> None:
        super().__init__()
        self.vocab, self.w = vocab, torch.nn.Parameter(torch.zeros(1))

    def forward(self, input_ids):
        batch, length = input_ids.shape
        logits = torch.zeros(batch, length, self.vocab)
        for b in range(batch):
            for t in range(length):
                earlier = [s for s in range(t) if input_ids[b, s] == input_ids[b, t]]
                if earlier:
                    logits[b, t, input_ids[b, earlier[-1] + 1]] = 30.0
        return type("Out", (), {"logits": logits})()


class _Uniform(_Lookup):
    def forward(self, input_ids):
        return type("Out", (), {"logits": torch.zeros(*input_ids.shape, self.vocab)})()


def test_probe_separates_copying_from_guessing(toy_tokenizer):
    vocab = len(toy_tokenizer)
    copier = copy_probe(_Lookup(vocab), toy_tokenizer, runs=2, length=12)
    guesser = copy_probe(_Uniform(vocab), toy_tokenizer, runs=2, length=12)
    assert copier.copies and copier.second_loss < 0.01
    assert not guesser.copies
    assert abs(guesser.first_loss - guesser.second_loss) < 1e-5
    assert abs(guesser.first_loss - torch.log(torch.tensor(float(vocab))).item()) < 1e-4
