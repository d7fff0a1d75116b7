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


# --- the CUDA varlen path, checked on the CPU with stand-ins that keep each kernel's contract -----------------
def _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, *, window=None, scale=None):
    """What a varlen flash kernel computes: [N, H, D] tensors, causal per example (key i-window+1..i)."""
    from utils.model.attention import _band

    outs = []
    for a, b in zip(cu_q.tolist()[:-1], cu_q.tolist()[1:]):
        qs, ks, vs = (t[a:b].transpose(0, 1) for t in (q, k, v))
        mask = _band(b - a, b - a, window, q.device) if window else None
        outs.append(torch.nn.functional.scaled_dot_product_attention(
            qs, ks, vs, attn_mask=mask, is_causal=mask is None, scale=scale,
            enable_gqa=qs.shape[0] != ks.shape[0]).transpose(0, 1))
    return torch.cat(outs)


def torch_2_13(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1), enable_gqa=False):
    assert window_size[1] == 0 and (enable_gqa or q.shape[1] == k.shape[1])
    return _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale,
                             window=window_size[0] + 1 if window_size[0] >= 0 else None)


def torch_2_11(q, k, v, cu_q, cu_k, max_q, max_k, *, scale=None, window_size=(-1, -1)):
    assert q.shape[1] == k.shape[1], "no enable_gqa: the heads must have been repeated"
    return torch_2_13(q, k, v, cu_q, cu_k, max_q, max_k, scale=scale, window_size=window_size, enable_gqa=False)


def torch_2_10(q, k, v, cu_q, cu_k, max_q, max_k, is_causal=False):
    assert is_causal and q.shape[1] == k.shape[1]
    return _reference_varlen(q, k, v, cu_q, cu_k, max_q, max_k)


@pytest.mark.parametrize("fn", [torch_2_13, torch_2_11, torch_2_10], ids=["enable_gqa", "no_gqa", "is_causal"])
@pytest.mark.parametrize("window", [None, 7], ids=["causal", "sliding_window"])
def test_one_varlen_call_equals_each_example_alone(fn, window):
    import inspect

    from utils.model.attention import VarlenKernel, _per_example, _varlen

    kernel = VarlenKernel("stand-in", fn, frozenset(inspect.signature(fn).parameters))
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 30, 8, generator=gen) for h in (4, 2, 2))
    bounds = torch.tensor([0, 5, 18, 30], dtype=torch.int32)
    out = _varlen(kernel, q, k, v, bounds, 8 ** -0.5, window)
    expected = _per_example(None, q, k, v, bounds, 8 ** -0.5, 0.0, window)
    assert out.shape == (1, 30, 4, 8)
    assert torch.allclose(out, expected, atol=1e-6)


def test_the_kernel_is_chosen_once_and_named_in_the_plan(monkeypatch):
    from utils.model import attention

    assert attention.describe("cpu", fp32=True) == "SDPA per example, float32 inside bf16 autocast"
    attention.cuda_kernel.cache_clear()
    try:
        name = attention.describe("cuda", fp32=False)  # this torch's varlen_attn (a CUDA kernel, not run here)
        assert name.startswith("varlen flash (torch ") and name.endswith(" varlen_attn)")
        assert attention.cuda_kernel() is attention.cuda_kernel()
    finally:
        attention.cuda_kernel.cache_clear()
