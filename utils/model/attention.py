"""Varlen attention for padding-free packed rows, registered with transformers as ``packed_varlen``.

A packed row holds several examples; attention must stay inside each. Building an
[N x N] block-diagonal mask costs O(N^2) memory and compute for mostly-masked scores. On a GPU the whole
row goes through one varlen flash-attention call per layer (causal inside each example): torch's
``varlen_attn`` where this torch has it, else flash-attn's ``flash_attn_varlen_func`` when installed, else
each example through SDPA held to its flash backend (never the cuDNN one, which builds a plan for every new
length). On the CPU each example's slice runs through SDPA with ``is_causal=True``. Example
bounds come from ``cu_seq_lens_q`` (computed on the host by the packer, so no device
sync); without them (generation, padded batches) this is plain SDPA with the usual mask.
A sliding window (Mistral, and Qwen2 / Phi-3 configs that set one) is honoured in both cases: an example
longer than the window gets a banded causal mask instead of ``is_causal``. Soft-capped and sink layers, and
keywords this path does not know, are sorted out first (utils/model/attention_eager.py).

``packed_varlen_fp32`` is the same with the attention itself in float32 when bf16 autocast hands it bf16
tensors on the CPU: PyTorch's CPU flash-attention kernels run float32 faster than bf16 (forward and
backward, measured in docs/BENCHMARKS.md), and the projections around it stay bf16 matmuls.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from utils.common.errors import UserError, one_line
from utils.model.attention_eager import eager_attention, slow_feature
from utils.model.kernels import VarlenKernel, cuda_kernel, cuda_path, kernel_dtype, unserved

NAME = "packed_varlen"  # no "sdpa" in it: transformers would then ask for SDPA support (Gemma 2 has none)
NAME_FP32 = "packed_varlen_fp32"
_registered = False


@torch.compiler.disable  # kept out of compiled decoder layers: it reads the example bounds on the host
def packed_sdpa_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """query [1, H, N, D], key/value [1, Hkv, N, D] → ([1, N, H, D], None)."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    bounds = kwargs.get("cu_seq_lens_q")
    window = kwargs.get("sliding_window")
    if is_bounds_mask(attention_mask):
        if bounds is None:
            raise ValueError("the bounds mask of a packed row needs cu_seq_lens_q")
        attention_mask = None
    if slow_feature(module, kwargs):  # soft-capping, sinks: the model's own eager attention, per example
        return eager_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    if attention_mask is None and window and key.shape[2] > window and (bounds is None or query.shape[0] != 1):
        attention_mask = _band(query.shape[2], key.shape[2], window, query.device)[None, None]
    if bounds is None or attention_mask is not None or query.shape[0] != 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask,
                                      scaling=scaling, dropout=dropout, **kwargs)
    if not cuda_path(query.device):
        return _per_example(module, query, key, value, bounds, scaling, dropout, window), None
    kernel = cuda_kernel()
    out = None
    if kernel.fn is not None and not (dropout and module.training) \
            and unserved(kernel_dtype(query, key, value), query.shape[-1], kernel) is None:
        out = _varlen(kernel, query, key, value, bounds, scaling, window, kwargs.get("max_length_q"))
    if out is None:  # no varlen kernel for this row: SDPA per example, held to the flash backends
        from torch.nn.attention import SDPBackend, sdpa_kernel

        # emulated on the CPU, whose flash backend lacks dropout, the math backend stands in where flash cannot
        backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION] + (
            [SDPBackend.MATH] if query.device.type == "cpu" else [])
        with sdpa_kernel(backends):
            out = _per_example(module, query, key, value, bounds, scaling, dropout, window)
    return out, None


@torch.compiler.disable  # as packed_sdpa_attention
def packed_sdpa_fp32_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """``packed_sdpa_attention`` computed in float32 when given bf16 tensors on the CPU; output in bf16."""
    if cuda_path(query.device) or query.dtype != torch.bfloat16:
        return packed_sdpa_attention(module, query, key, value, attention_mask, scaling, dropout, **kwargs)
    with torch.autocast("cpu", enabled=False):  # CPU autocast would cast SDPA's inputs back to bf16
        out, weights = packed_sdpa_attention(module, query.float(), key.float(), value.float(), attention_mask,
                                             scaling, dropout, **kwargs)
    return out.to(torch.bfloat16), weights


def _per_example(module, query, key, value, bounds, scaling, dropout, window=None) -> torch.Tensor:
    bounds = bounds.tolist() if torch.is_tensor(bounds) else list(bounds)
    lengths = [b - a for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
    gqa = query.shape[1] != key.shape[1]
    drop = dropout if module is not None and module.training else 0.0
    # split (not slicing): its backward is one concatenation, where each slice's backward would
    # zero-fill and add a full-size gradient per example (quadratic in examples per row)
    outs = [
        F.scaled_dot_product_attention(q, k, v, is_causal=not (window and q.shape[2] > window), scale=scaling,
                                       attn_mask=_band(q.shape[2], q.shape[2], window, q.device)
                                       if window and q.shape[2] > window else None,
                                       dropout_p=drop, enable_gqa=gqa)
        for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))
    ]
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous()


def describe(device: torch.device | str, fp32: bool, dtype: torch.dtype | None = None,
             head_dim: int | None = None, dropout: float = 0.0, slow: str = "") -> str:
    """The run plan's line on packed attention for ``device``, attention computed in ``dtype`` (the autocast
    dtype, else the weights') with heads of ``head_dim`` and ``dropout`` in training: the same choice
    ``packed_sdpa_attention`` makes. ``slow``: the features (soft-capping, sinks) its layers hand the attention,
    which send them through the model's own eager attention instead."""
    if slow:
        return (f"the model's own eager attention per example on the layers with {slow} (neither SDPA nor a "
                "varlen kernel computes it; slower, exact)")
    if not cuda_path(device):
        return "SDPA per example" + (", float32 inside bf16 autocast" if fp32 else "")
    kernel = cuda_kernel()
    why = unserved(dtype, head_dim, kernel)
    if not why and dropout and kernel.fn is not None:
        why = f"attention dropout {dropout:g} is not in the varlen kernel (evaluation uses it)"
    if why:
        return f"SDPA per example, flash/efficient backends: {why} ({kernel.name} not used)"
    if kernel.fn is None:
        return kernel.name
    return f"{kernel.name}, q/k/v in {str(dtype).removeprefix('torch.')}"


def attention_dropout(config) -> float:
    """The attention dropout of a transformers config (``attention_dropout``, GPT-2's ``attn_pdrop``)."""
    for name in ("attention_dropout", "attn_pdrop"):
        value = getattr(config, name, None)
        if isinstance(value, (int, float)):
            return float(value)
    return 0.0


def head_dim(config) -> int | None:
    """The attention head size of a transformers config."""
    size = getattr(config, "head_dim", None)
    if isinstance(size, int) and size > 0:
        return size
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", None)
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", None)
    return hidden // heads if hidden and heads else None


def _varlen(kernel: VarlenKernel, query, key, value, bounds, scaling, window, longest=None) -> torch.Tensor | None:
    """One kernel call over the packed row: [1, H, N, D] in, [1, N, H, D] out, q, k and v in the one half
    dtype of ``kernel_dtype``. None for a row the kernel cannot express (a window or a scale it has no keyword
    for): SDPA per example takes it."""
    if longest is None:
        starts = bounds.tolist() if torch.is_tensor(bounds) else list(bounds)
        longest = max(b - a for a, b in zip(starts[:-1], starts[1:]))
    windowed = bool(window and longest > window)
    default_scale = scaling is None or abs(scaling - query.shape[-1] ** -0.5) < 1e-9
    if kernel.layout == "flash_attn":
        args = {"softmax_scale": scaling, "causal": True, "window_size": (window - 1 if windowed else -1, 0)}
    elif "window_size" in kernel.takes or ("is_causal" in kernel.takes and not windowed):
        args = ({"window_size": (window - 1 if windowed else -1, 0)} if "window_size" in kernel.takes
                else {"is_causal": True})  # key i - window + 1 .. i, as _band
        if "scale" in kernel.takes:
            args["scale"] = scaling
        elif not default_scale:
            return None
    else:
        return None
    dtype = kernel_dtype(query, key, value) or query.dtype
    q, k, v = (t[0].transpose(0, 1).to(dtype) for t in (query, key, value))  # [N, heads, D], last dim contiguous
    gqa = q.shape[1] != k.shape[1]
    if kernel.layout == "torch" and "enable_gqa" in kernel.takes:
        args["enable_gqa"] = gqa
    elif gqa and kernel.layout == "torch":  # no enable_gqa: every query head gets its key/value head
        k, v = (t.repeat_interleave(q.shape[1] // t.shape[1], dim=1) for t in (k, v))
    return kernel.fn(q, k, v, *(_on_device(bounds, q.device),) * 2, int(longest), int(longest),
                     **args).unsqueeze(0)


_device_bounds: list = [None, None]
"""(host bounds, their copy on the GPU): every layer of one forward gets the same host tensor, copied once."""


def _on_device(bounds, device: torch.device) -> torch.Tensor:
    if _device_bounds[0] is not bounds:
        host = torch.as_tensor(bounds, dtype=torch.int32)
        if device.type == "cuda":
            host = host.pin_memory()  # then the copy below does not wait for the GPU's queued work
        _device_bounds[:] = [bounds, host.to(device, non_blocking=True)]
    return _device_bounds[1]


def _band(q_len: int, k_len: int, window: int, device) -> torch.Tensor:
    """Causal mask within a sliding window: query i (the last q_len of k_len positions) sees keys (i - window, i]."""
    rows = torch.arange(q_len, device=device)[:, None] + (k_len - q_len)
    cols = torch.arange(k_len, device=device)[None, :]
    return (cols <= rows) & (cols > rows - window)


def bounds_mask(device) -> torch.Tensor:
    """The attention mask of a packed row whose example bounds go in as ``cu_seq_lens``: an empty 4-D mask.

    transformers hands a 4-D mask to attention as it is, building none; without one it reads the packed layout
    back from ``position_ids`` with a host sync per forward (``.all()`` in ``find_packed_sequence_indices``), and
    GPT-2 checks the row for padding, another. Only ``packed_varlen`` accepts this mask (a model on another
    attention refuses it), and it attends within the bounds.
    """
    return torch.empty((1, 1, 0, 0), dtype=torch.bool, device=device)


def is_bounds_mask(mask) -> bool:
    return torch.is_tensor(mask) and mask.dim() == 4 and mask.shape[-1] == 0


def _packed_mask(*args, **kwargs):
    """No mask for packed rows (attention uses the bounds); the SDPA mask for padded batches."""
    from transformers.masking_utils import sdpa_mask

    if kwargs.get("attention_mask") is None:
        return None
    return sdpa_mask(*args, **kwargs)


def register(fp32: bool = False) -> str:
    """Register ``packed_varlen`` and ``packed_varlen_fp32`` with transformers once; returns the name asked for."""
    global _registered
    if not _registered:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface

        AttentionInterface.register(NAME, packed_sdpa_attention)
        AttentionInterface.register(NAME_FP32, packed_sdpa_fp32_attention)
        AttentionMaskInterface.register(NAME, _packed_mask)
        AttentionMaskInterface.register(NAME_FP32, _packed_mask)
        _registered = True
    return NAME_FP32 if fp32 else NAME


def use_packed_attention(model, fp32: bool = False) -> None:
    """Switch a loaded model to ``packed_varlen`` or, with ``fp32``, ``packed_varlen_fp32``; a model transformers
    will not switch is refused (the run plan would name a kernel the model does not use)."""
    name = register(fp32)
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    try:
        base.set_attn_implementation(name)
    except (ValueError, AttributeError, NotImplementedError) as err:
        raise UserError(f"model_type {getattr(base.config, 'model_type', '?')!r}: transformers would not switch "
                        f"its attention to {name} ({one_line(err)}); "
                        "packed rows need it: use a supported architecture (docs/PIPELINE.md)") from None


def uses_packed_attention(model) -> bool:
    """Whether ``model`` (a transformers model or its decoder) attends through ``packed_varlen``."""
    config = getattr(model, "config", None)
    return getattr(config, "_attn_implementation", None) in (NAME, NAME_FP32)
