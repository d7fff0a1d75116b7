"""Packed attention: an example packed with others gives the logits it gives alone (SDPA per example, the float32
variant under bf16 autocast)."""
from __future__ import annotations

import re

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
        loss_together, _ = SupervisedLoss(model)(*together.loss_inputs())
        loss_alone = 0.0
        for i, example in enumerate(examples):
            alone = pack([example])
            lo, hi = int(together.cu_seq_lens[i]), int(together.cu_seq_lens[i + 1])
            assert torch.allclose(logits[lo:hi], _logits(model, alone), atol=1e-5)
            loss_alone += SupervisedLoss(model)(*alone.loss_inputs())[0]
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
    assert model.config._attn_implementation == "packed_varlen_fp32"
    store = random_store("s", 5, seed=7)
    examples = [(*store.get(i), 0) for i in range(len(store))]
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        together = pack(examples)
        logits = _logits(model, together).float()
        for i, example in enumerate(examples):
            lo, hi = int(together.cu_seq_lens[i]), int(together.cu_seq_lens[i + 1])
            assert torch.allclose(logits[lo:hi], _logits(model, pack([example])).float(), atol=3e-2)


# --- the CUDA varlen path, checked on the CPU with the stand-ins that hold each kernel's contract ----------------
@pytest.mark.parametrize("kind", ["torch-2.13", "torch-2.11", "torch-2.10", "flash-attn"])
@pytest.mark.parametrize("window", [None, 7], ids=["causal", "sliding_window"])
def test_one_varlen_call_equals_each_example_alone(kind, window, monkeypatch):
    """q and k in float32 beside a bf16 v under autocast, as rotary embedding leaves them: the kernel gets all three
    in bf16 and matches each example alone; a window torch 2.10's kernel cannot express is left to SDPA (None)."""
    from utils.model import kernels
    from utils.model.attention import _per_example, _varlen

    monkeypatch.setenv(kernels.EMULATE_ENV, kind)
    kernels.cuda_kernel.cache_clear()
    try:
        kernel = kernels.cuda_kernel()
        gen = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, h, 30, 8, generator=gen) for h in (4, 2, 2))
        bounds = torch.tensor([0, 5, 18, 30], dtype=torch.int32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = _varlen(kernel, q, k, v.bfloat16(), bounds, 8 ** -0.5, window)
        if kind == "torch-2.10" and window:
            assert out is None
            return
        expected = _per_example(None, q.bfloat16(), k.bfloat16(), v.bfloat16(), bounds, 8 ** -0.5, 0.0, window)
        assert out.shape == (1, 30, 4, 8) and out.dtype == torch.bfloat16
        torch.testing.assert_close(out, expected, atol=1e-2, rtol=1e-2)
    finally:
        monkeypatch.delenv(kernels.EMULATE_ENV)
        kernels.cuda_kernel.cache_clear()


@pytest.mark.parametrize("bad, message", [
    ({"q": torch.float32}, "FlashAttention only support fp16 and bf16 data type"),
    ({"v": torch.float16}, "query and key must have the same dtype"),
    ({"cu": torch.int64}, "cu_seqlens_q must have dtype int32"),
    ({"max": "tensor"}, "max_q must be a Python int"),
    ({"window": [-1, 0]}, "window_size must be a (left, right) tuple"),
    ({"heads": 3}, "Expect query and key/value to have the same number of heads"),
    ({"head_dim": 264}, "FlashAttention forward only supports head dimension at most 256"),
    ({"strided": True}, "Input tensor must have contiguous last dimension"),
])
def test_the_stand_in_refuses_what_the_real_kernel_refuses(bad, message):
    from utils.model.kernels import _varlen_2_13

    d = bad.get("head_dim", 8)
    q = torch.randn(12, 4, d, dtype=bad.get("q", torch.bfloat16))
    k = torch.randn(12, bad.get("heads", 4), d, dtype=torch.bfloat16)
    v = torch.randn(12, bad.get("heads", 4), d, dtype=bad.get("v", torch.bfloat16))
    if bad.get("strided"):
        q = torch.randn(12, 4, 2 * d, dtype=torch.bfloat16)[..., ::2]
    cu = torch.tensor([0, 5, 12], dtype=bad.get("cu", torch.int32))
    longest = torch.tensor(7) if bad.get("max") else 7
    with pytest.raises((RuntimeError, ValueError, TypeError), match=re.escape(message)):
        _varlen_2_13(q, k, v, cu, cu, longest, longest, window_size=bad.get("window", (-1, 0)))


def test_the_kernel_is_chosen_once_and_named_in_the_plan(monkeypatch):
    from utils.model import attention

    assert attention.describe("cpu", fp32=True) == "SDPA per example, float32 inside bf16 autocast"
    attention.cuda_kernel.cache_clear()
    try:
        name = attention.describe("cuda", fp32=False, dtype=torch.bfloat16, head_dim=64)  # a CUDA kernel, not run
        assert name.startswith("varlen flash (torch ") and name.endswith(" varlen_attn), q/k/v in bfloat16")
        assert attention.describe("cuda", False, torch.float32, 64).startswith(
            "SDPA per example, flash/efficient backends: the varlen kernel takes float16/bfloat16 only")
        assert "head_dim 512 is over the varlen kernel's 256" in attention.describe("cuda", False, torch.bfloat16, 512)
        assert "attention dropout 0.1 is not in the varlen kernel" in attention.describe(
            "cuda", False, torch.bfloat16, 64, dropout=0.1)
        assert attention.cuda_kernel() is attention.cuda_kernel()
    finally:
        attention.cuda_kernel.cache_clear()


def test_a_model_that_will_not_switch_to_packed_attention_is_refused(monkeypatch):
    from utils.common.errors import UserError

    model = tiny_llama()

    def refuse(name):
        raise ValueError(f"{name} is not supported by this model\n(see the docs)")

    monkeypatch.setattr(model, "set_attn_implementation", refuse)
    with pytest.raises(UserError) as err:
        use_packed_attention(model)
    assert str(err.value) == ("model_type 'llama': transformers would not switch its attention to packed_varlen "
                              "(ValueError: packed_varlen is not supported by this model (see the docs)); packed rows "
                              "need it: use a supported architecture (docs/PIPELINE.md)")
    assert model.config._attn_implementation != "packed_varlen"
