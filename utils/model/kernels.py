"""The varlen attention kernels of a CUDA run, the input contract each one states in its source, and a CPU
emulation of them.

A packed row goes through one varlen flash-attention call per layer on a GPU: torch's ``varlen_attn`` (its
signature changed over releases: ``is_causal`` in 2.10; ``scale`` and ``window_size`` in 2.11, where causality
is ``window_size == (-1, 0)``, a tuple; ``enable_gqa`` in 2.13), else flash-attn's ``flash_attn_varlen_func``,
else SDPA per example. Every one of them runs the same CUDA flash kernel, whose checks are (torch's
``mha_varlen_fwd`` and flash-attn's): query, key and value in one dtype, float16 or bfloat16 (no float32);
``[tokens, heads, head_dim]`` with a contiguous last dimension; head_dim at most 256, the same for q, k and v;
key/value heads dividing query heads; ``cu_seqlens`` int32, one-dimensional and contiguous, on the tensors'
device; max lengths as Python ints. torch's is a custom op with no autocast rule, so under autocast it gets its
inputs as they come, in whatever dtypes the layers before it left them.

``SFT_EMULATE_CUDA_KERNELS`` makes a CPU run take the CUDA path with stand-ins of these kernels: each has the
real function's signature, refuses what the real one refuses (the checks above, with the real messages), runs
with autocast off as the custom op does, and computes the right answer (SDPA per example in the given dtype).
Its values: ``1`` or ``torch`` (the signature of this torch's own ``varlen_attn``), ``torch-2.10``,
``torch-2.11``, ``torch-2.13``, ``flash-attn``, or ``sdpa`` (no varlen kernel: SDPA per example, as on a GPU
without one). ``make test`` trains, evaluates, generates and resumes through them.
"""
from __future__ import annotations

import functools
import inspect
import os
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F

from utils.common.errors import UserError

EMULATE_ENV = "SFT_EMULATE_CUDA_KERNELS"
EMULATIONS = ("torch", "torch-2.10", "torch-2.11", "torch-2.13", "flash-attn", "sdpa")
HALF = (torch.float16, torch.bfloat16)
MAX_HEAD_DIM = 256
"""The largest head size of the flash kernels (torch's mha_varlen_fwd and flash-attn 2 alike)."""


class VarlenKernel(NamedTuple):
    """The packed-attention kernel of a CUDA run: ``fn`` (None: SDPA per example, flash backend) and the keywords
    it takes (torch's ``varlen_attn`` gained ``window_size``, ``scale`` and ``enable_gqa`` over releases; before
    ``window_size`` it had ``is_causal``)."""

    name: str
    fn: Callable | None
    takes: frozenset = frozenset()
    layout: str = "torch"
    """Argument names: torch's ``varlen_attn`` or flash-attn's ``flash_attn_varlen_func``."""
    max_head_dim: int = MAX_HEAD_DIM


def emulation() -> str | None:
    """The kernel the CPU emulates (``SFT_EMULATE_CUDA_KERNELS``), or None for none."""
    value = os.environ.get(EMULATE_ENV, "").strip().lower()
    if value in ("", "0", "no", "false"):
        return None
    value = "torch" if value in ("1", "yes", "true") else value
    if value not in EMULATIONS:
        raise UserError(f"{EMULATE_ENV}={value!r}: not a kernel this trainer emulates; use 1 or one of "
                        f"{', '.join(EMULATIONS)}")
    return value


def cuda_path(device: torch.device | str) -> bool:
    """Whether tensors on ``device`` take the CUDA code path: on a GPU, or on the CPU under the emulation."""
    return torch.device(device).type == "cuda" or emulation() is not None


@functools.lru_cache(maxsize=None)
def _kernel(emulated: str | None) -> VarlenKernel:
    if emulated is not None:
        fn, layout = _STAND_INS[_this_torch() if emulated == "torch" else emulated]
        kernel = _describe_fn(fn, layout) if fn is not None else _SDPA
        return kernel._replace(name=f"{kernel.name}, emulated on the CPU ({EMULATE_ENV}={emulated})")
    try:
        from torch.nn.attention.varlen import varlen_attn  # CUDA flash kernel; absent in older torch
    except ImportError:
        varlen_attn = None
    if varlen_attn is not None:
        return _describe_fn(varlen_attn, "torch", f"torch {torch.__version__.split('+')[0]}")
    try:
        from flash_attn import flash_attn_varlen_func  # optional package: used when installed
    except ImportError:
        return _SDPA
    return _describe_fn(flash_attn_varlen_func, "flash_attn")


def cuda_kernel() -> VarlenKernel:
    """The kernel of a CUDA run, chosen once per process (and per emulation setting)."""
    return _kernel(emulation())


cuda_kernel.cache_clear = _kernel.cache_clear  # tests switch the emulation within one process


_SDPA = VarlenKernel("SDPA per example, flash backend (no varlen kernel in this torch)", None)


def _describe_fn(fn: Callable, layout: str, version: str | None = None) -> VarlenKernel:
    if layout == "flash_attn":
        return VarlenKernel("varlen flash (flash-attn flash_attn_varlen_func)", fn,
                            frozenset({"window_size", "softmax_scale", "causal"}), layout="flash_attn")
    version = version or getattr(fn, "torch_version", "torch")
    return VarlenKernel(f"varlen flash ({version} varlen_attn)", fn, frozenset(inspect.signature(fn).parameters))


def kernel_dtype(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.dtype | None:
    """The one half-precision dtype q, k and v go to the kernel in: the autocast dtype when autocast is on for
    their device (rotary embedding leaves q and k in float32 beside a bf16 v, as transformers' flash integration
    also finds), else their own dtype when they share a half one; None when the kernel cannot serve them
    (float32 without autocast)."""
    device = query.device.type
    if torch.is_autocast_enabled(device):
        dtype = torch.get_autocast_dtype(device)
        return dtype if dtype in HALF else None
    dtypes = {query.dtype, key.dtype, value.dtype}
    return query.dtype if len(dtypes) == 1 and query.dtype in HALF else None


def unserved(dtype: torch.dtype | None, head_dim: int | None, kernel: VarlenKernel) -> str | None:
    """Why ``kernel`` cannot take a run computing attention in ``dtype`` with heads of ``head_dim`` (None: it can)."""
    if kernel.fn is None:
        return None
    if dtype not in HALF:
        return "the varlen kernel takes float16/bfloat16 only and attention runs in float32 here (bf16 off)"
    if head_dim is not None and head_dim > kernel.max_head_dim:
        return f"head_dim {head_dim} is over the varlen kernel's {kernel.max_head_dim}"
    return None


# --- the stand-ins ---------------------------------------------------------------------------------------------
def _check(query, key, value, cu_q, cu_k, max_q, max_k) -> None:
    """The flash kernel's own checks (mha_varlen_fwd), with its messages."""
    if query.dtype not in HALF:
        raise RuntimeError("FlashAttention only support fp16 and bf16 data type")
    if key.dtype != query.dtype or value.dtype != query.dtype:
        raise RuntimeError("query and key must have the same dtype")
    for name, t in (("query", query), ("key", key), ("value", value)):
        if t.dim() != 3:
            raise RuntimeError(f"{name} must be [total_tokens, heads, head_dim], got {tuple(t.shape)}")
        if t.stride(-1) != 1:
            raise RuntimeError("Input tensor must have contiguous last dimension")
        if t.device != query.device:
            raise RuntimeError(f"{name} must be on the device of query")
    if query.shape[-1] > MAX_HEAD_DIM:
        raise RuntimeError("FlashAttention forward only supports head dimension at most 256")
    if key.shape[-1] != query.shape[-1] or value.shape[-1] != query.shape[-1]:
        raise RuntimeError("key and value must have the head dimension of query")
    if query.shape[1] % key.shape[1]:
        raise RuntimeError("Number of heads in key/value must divide number of heads in query")
    for name, cu in (("cu_seqlens_q", cu_q), ("cu_seqlens_k", cu_k)):
        if cu.dtype != torch.int32:
            raise RuntimeError(f"{name} must have dtype int32")
        if cu.device != query.device:
            raise RuntimeError(f"{name} must be on CUDA")  # CHECK_DEVICE: the tensors' device
        if cu.dim() != 1 or not cu.is_contiguous():
            raise RuntimeError(f"{name} must be contiguous")
    for name, n in (("max_q", max_q), ("max_k", max_k)):
        if type(n) is not int:  # the op's schema says int: a tensor would be read back from the GPU
            raise TypeError(f"{name} must be a Python int, got {type(n).__name__}")
    bounds = cu_q.tolist()
    if bounds[0] != 0 or bounds[-1] != query.shape[0] or max(b - a for a, b in zip(bounds, bounds[1:])) > max_q:
        raise RuntimeError(f"cu_seqlens {bounds} do not describe {query.shape[0]} tokens with max length {max_q}")


def _attend(query, key, value, cu, scale, left: int, causal: bool) -> torch.Tensor:
    """What the kernel computes: attention inside each example, causal (``left`` >= 0: keys i - left .. i)."""
    out = []
    with torch.autocast(query.device.type, enabled=False):  # a custom op: no autocast inside
        for a, b in zip(cu.tolist()[:-1], cu.tolist()[1:]):
            q, k, v = (t[a:b].transpose(0, 1) for t in (query, key, value))
            rows = torch.arange(b - a)[:, None]
            cols = torch.arange(b - a)[None, :]
            mask = (cols <= rows) if causal else torch.ones(b - a, b - a, dtype=torch.bool)
            if left >= 0:
                mask = mask & (cols >= rows - left)
            out.append(F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale,
                                                      enable_gqa=q.shape[0] != k.shape[0]).transpose(0, 1))
    return torch.cat(out)


def _varlen_2_10(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, is_causal=False, return_aux=None):
    if query.shape[1] != key.shape[1]:
        raise RuntimeError("this varlen_attn has no enable_gqa: query and key/value must have the same heads")
    _check(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k)
    return _attend(query, key, value, cu_seq_q, None, -1, bool(is_causal))


def _varlen_2_11(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                 window_size=(-1, -1), k_cache=None, v_cache=None, cache_seqlens=None, cache_batch_idx=None,
                 page_table=None, seqused_k=None):
    if query.shape[1] != key.shape[1]:
        raise RuntimeError("this varlen_attn has no enable_gqa: query and key/value must have the same heads")
    return _window_call(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale, window_size)


def _varlen_2_13(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, *, return_aux=None, scale=None,
                 window_size=(-1, -1), enable_gqa=False, seqused_k=None, block_table=None, num_splits=None):
    if not enable_gqa and query.size(1) != key.size(1):
        raise ValueError(f"Expect query and key/value to have the same number of heads but got Hq={query.size(1)} "
                         f"and Hkv={key.size(1)}. Try setting enable_gqa=True for GQA.")
    return _window_call(query, key, value, cu_seq_q, cu_seq_k, max_q, max_k, scale, window_size)


def _window_call(query, key, value, cu_q, cu_k, max_q, max_k, scale, window_size):
    """torch 2.11+: ``is_causal = window_size == (-1, 0)``, so only a tuple is causal; (W, 0) is causal too in the
    flash kernel (right window 0)."""
    if not isinstance(window_size, tuple) or len(window_size) != 2:
        raise TypeError(f"window_size must be a (left, right) tuple, got {window_size!r} (varlen_attn compares it "
                        "with the tuple (-1, 0) to decide causality)")
    _check(query, key, value, cu_q, cu_k, max_q, max_k)
    if window_size[1] not in (0, -1):
        raise RuntimeError(f"window_size {window_size}: this trainer only asks for causal windows")
    return _attend(query, key, value, cu_q, scale, window_size[0], causal=window_size[1] == 0)


def _flash_attn_varlen(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k, dropout_p=0.0,
                       softmax_scale=None, causal=False, window_size=(-1, -1), softcap=0.0, alibi_slopes=None,
                       deterministic=False, return_attn_probs=False, block_table=None):
    _check(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
    if dropout_p or softcap or alibi_slopes is not None:
        raise RuntimeError("the stand-in computes no dropout, soft-capping or ALiBi")
    return _attend(q, k, v, cu_seqlens_q, softmax_scale, window_size[0], bool(causal))


for _fn, _version in ((_varlen_2_10, "torch 2.10"), (_varlen_2_11, "torch 2.11"), (_varlen_2_13, "torch 2.13")):
    _fn.torch_version = _version

_STAND_INS = {"torch-2.10": (_varlen_2_10, "torch"), "torch-2.11": (_varlen_2_11, "torch"),
              "torch-2.13": (_varlen_2_13, "torch"), "flash-attn": (_flash_attn_varlen, "flash_attn"),
              "sdpa": (None, "torch")}


def _this_torch() -> str:
    """The stand-in whose signature is this torch's own ``varlen_attn`` (the newest one at or before it)."""
    major, minor = (int(x) for x in torch.__version__.split("+")[0].split(".")[:2])
    if (major, minor) >= (2, 13):
        return "torch-2.13"
    return "torch-2.11" if (major, minor) >= (2, 11) else "torch-2.10"
