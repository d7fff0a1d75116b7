"""Packed attention: an example packed with others gives the logits it gives alone (SDPA per example, the float32
variant under bf16 autocast)."""
from __future__ import annotations

import pytest
import torch

from train_helpers import random_store, tiny_llama
from utils.model.attention import use_packed_attention
from utils.model.loss import SupervisedLoss
from utils.sampling.packing import pack


def _logits(model, batch):
    body, head = model.model, model.lm_head
    hidden = body(input_ids=batch.input_ids, position_ids=batch.position_ids, use_cache=False,
                  cu_seq_lens_q=batch.cu_seq_lens, cu_seq_lens_k=batch.cu_seq_lens).last_hidden_state
    return head(hidden)[0]


@pytest.mark.parametrize("packed_attention", [True, False], ids=["packed_sdpa", "transformers_mask"])
def test_packed_example_equals_example_alone(packed_attention):
    model = tiny_llama().eval()
    if packed_attention:
        use_packed_attention(model)
    store = random_store("s", 5, seed=7)
    examples = [(*store.get(i), 0) for i in range(len(store))]
    with torch.no_grad():
        together = pack(examples)
        logits = _logits(model, together)
        loss_together, _ = SupervisedLoss(model)(together.input_ids, together.position_ids, together.targets,
                                                 together.source_ids, together.cu_seq_lens)
        loss_alone = 0.0
        for i, example in enumerate(examples):
            alone = pack([example])
            lo, hi = int(together.cu_seq_lens[i]), int(together.cu_seq_lens[i + 1])
            assert torch.allclose(logits[lo:hi], _logits(model, alone), atol=1e-5)
            loss_alone += SupervisedLoss(model)(alone.input_ids, alone.position_ids, alone.targets,
                                                alone.source_ids, alone.cu_seq_lens)[0]
    assert abs(loss_together.item() - float(loss_alone)) <= 1e-5 * abs(float(loss_alone))


def test_fp32_attention_computes_in_float32_and_returns_bf16():
    from utils.model.attention import packed_sdpa_fp32_attention

    module = torch.nn.Module().eval()
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 30, 8, generator=gen).bfloat16() for h in (4, 2, 2))
    bounds = torch.tensor([0, 12, 30], dtype=torch.int32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = packed_sdpa_fp32_attention(module, q, k, v, None, cu_seq_lens_q=bounds)
    assert out.dtype == torch.bfloat16 and out.shape == (1, 30, 4, 8)
    expected = torch.cat([torch.nn.functional.scaled_dot_product_attention(
        q[:, :, a:b].float(), k[:, :, a:b].float(), v[:, :, a:b].float(), is_causal=True, enable_gqa=True)
        for a, b in ((0, 12), (12, 30))], dim=2).transpose(1, 2).bfloat16()
    assert torch.equal(out, expected)


def test_fp32_attention_packed_equals_alone_under_bf16():
    model = tiny_llama().eval()
    use_packed_attention(model, fp32=True)
    assert model.config._attn_implementation == "packed_sdpa_fp32"
    store = random_store("s", 5, seed=7)
    examples = [(*store.get(i), 0) for i in range(len(store))]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        together = pack(examples)
        logits = _logits(model, together).float()
        for i, example in enumerate(examples):
            lo, hi = int(together.cu_seq_lens[i]), int(together.cu_seq_lens[i + 1])
            assert torch.allclose(logits[lo:hi], _logits(model, pack([example])).float(), atol=3e-2)
