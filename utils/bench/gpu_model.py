"""The ``varlen`` check of ``make bench-gpu``: packed rows through real models, against each example alone.

A tiny random model of each family in ``FAMILIES`` (built from its transformers config, fp32 master weights) is
switched to the trainer's packed attention (``attention.use_packed_attention``, as a run does) and fed one packed
row through the trainer's own loss (``SupervisedLoss``) under ``torch.autocast`` in bf16, forward and backward;
then each example of the row alone, with no example bounds (plain causal SDPA, the padded-batch path). Each
example's loss (its source id is its index, so the loss's per-source sums are per example) and every parameter
gradient must agree within a tolerance set by the autocast dtype, judged by the packing check's own comparison
(``packing_check.compare``: a tensor's largest difference against the reference's largest magnitude). On a GPU the packed row goes through the varlen
flash kernel of this torch; on the CPU, under ``SFT_EMULATE_CUDA_KERNELS``, through its stand-in, which refuses
what the real kernel refuses (the tests run it so). The bare-tensor kernel time (``time_fwd_bwd`` below) stays as a
sub-figure: the kernel against a per-example loop at the same shapes.
"""
from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from utils.bench.gpu_runner import Check
from utils.model import attention, packing_check
from utils.model.kernels import cuda_kernel, unserved
from utils.model.loss import SupervisedLoss
from utils.sampling.packing import pack

FAMILIES = ("llama", "qwen2")
TOLERANCE = {torch.bfloat16: {"loss": 5e-3, "grad": 5e-2}, torch.float16: {"loss": 5e-3, "grad": 1e-2},
             torch.float32: {"loss": packing_check.RTOL, "grad": packing_check.RTOL}}
"""Largest relative differences allowed, packed against alone (``packing_check.compare``: the largest difference
over the reference's largest magnitude): of the examples' losses, and of each parameter's gradient; bf16 keeps 8
bits of mantissa. float32's are the packing check's own (``packing_check.RTOL``)."""
GPU_SHAPE = {"hidden": 256, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 512}  # head_dim 64: the kernel's
GPU_LENGTHS = (37, 263, 1, 511, 688, 548)


def family_model(model_type: str, hidden: int = 32, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                 vocab: int = 128, seed: int = 0) -> torch.nn.Module:
    """A random causal LM of ``model_type`` (llama or qwen2) built from its config, weights in float32."""
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

    kinds = {"llama": LlamaConfig, "qwen2": Qwen2Config}
    config = kinds[model_type](vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden,
                               num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                               max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(config).float()


def _examples(lengths, vocab: int, seed: int) -> list[tuple[np.ndarray, np.ndarray, int]]:
    """(input_ids, labels, source) per example, the source its index; the first quarter unsupervised."""
    rng = np.random.default_rng(seed)
    out = []
    for i, n in enumerate(lengths):
        ids = rng.integers(3, vocab, n).astype(np.int64)
        labels = ids.copy()
        labels[: n // 4] = -100
        out.append((ids, labels, i))
    return out


def _losses_and_grads(model, batches, num_sources: int, device, dtype) -> dict:
    """Per-example loss sums, the router's auxiliary loss and parameter gradients over ``batches`` (PackedBatch,
    bounds or None), as ``packing_check.compare`` takes them."""
    loss_module = SupervisedLoss(model, num_sources)
    model.zero_grad(set_to_none=True)
    per_example, aux = torch.zeros(num_sources, dtype=torch.float64), torch.zeros((), dtype=torch.float64)
    for batch, bounds in batches:
        inputs = batch.to(device).loss_inputs()[:-1]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss_sum, parts = loss_module(*inputs, bounds)
        loss_sum.backward()
        parts = parts.detach().double().cpu()  # per-source sums, then loss and aux
        per_example, aux = per_example + parts[:num_sources], aux + parts[-1]
    grads = {name: p.grad.detach().double().cpu() for name, p in model.named_parameters() if p.grad is not None}
    return {"losses": per_example, "aux": aux, "grads": grads}


def packed_vs_alone(model, lengths, device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16,
                    seed: int = 0) -> dict:
    """One packed row against each example alone through ``model`` on the trainer's packed attention, judged
    by the packing check's comparison at ``dtype``'s tolerance: ``problem`` (None: they agree) and the largest
    relative difference of an example's loss and of a parameter's gradient."""
    device = torch.device(device)
    model = model.to(device).train()
    attention.use_packed_attention(model)
    examples = _examples(lengths, model.config.vocab_size, seed)
    row = pack(examples)
    packed = _losses_and_grads(model, [(row, row.cu_seq_lens)], len(examples), device, dtype)
    alone = _losses_and_grads(model, [(pack([e]), None) for e in examples], len(examples), device, dtype)
    if not packed["grads"]:
        raise RuntimeError("no parameter received a gradient")
    limit = TOLERANCE[dtype]
    return {"problem": packing_check.compare(packed, alone, limit["loss"], limit["grad"]),
            **packing_check.relative_differences(packed, alone), "tokens": row.num_tokens,
            "examples": len(examples)}


def model_line(family: str, diff: dict, dtype: torch.dtype) -> tuple[bool, str]:
    """Whether ``diff`` is within the tolerance of ``dtype``, and its line in the report."""
    limit = TOLERANCE[dtype]
    line = (f"{family}: loss rel {diff['loss_rel']:.1e} (<= {limit['loss']:g}), gradient rel "
            f"{diff['grad_rel']:.1e} (<= {limit['grad']:g}, worst {diff['worst_param']})")
    return diff["problem"] is None, line + (f": {diff['problem']}" if diff["problem"] else "")


# ------------------------------------------------------------------------ the kernel on bare tensors, and its time
def alone(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    """Reference: each example of the packed row through causal SDPA by itself. Tensors are [N, H, D]."""
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        q, k, v = (t[a:b].transpose(0, 1) for t in (query, key, value))
        outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                   enable_gqa=q.shape[0] != k.shape[0]).transpose(0, 1))
    return torch.cat(outs)


def varlen(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    """The trainer's own packed attention on CUDA (one varlen flash call for the row, the kernel this torch
    offers: ``attention.cuda_kernel``), causal inside each example. Tensors are [N, H, D]."""
    q, k, v = (t.transpose(0, 1)[None] for t in (query, key, value))
    return attention._varlen(attention.cuda_kernel(), q, k, v, torch.tensor(bounds, dtype=torch.int32), None, None)[0]


def compare_with_alone(packed: Callable, bounds: list[int], heads: int = 8, kv_heads: int = 4, dim: int = 64,
                       device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> dict:
    """Largest differences of output and input gradients between ``packed`` and ``alone``."""
    gen = torch.Generator().manual_seed(seed)
    n = bounds[-1]
    shapes = ((n, heads, dim), (n, kv_heads, dim), (n, kv_heads, dim))
    base = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
    grad = torch.randn((n, heads, dim), generator=gen).to(device, dtype)
    results = []
    for fn in (packed, alone):
        inputs = [t.clone().requires_grad_(True) for t in base]
        out = fn(*inputs, bounds)
        out.backward(grad)
        results.append((out.detach().float(), [t.grad.float() for t in inputs]))
    (out_p, grads_p), (out_a, grads_a) = results
    return {"max_abs_out": float((out_p - out_a).abs().max()),
            "max_abs_grad": max(float((gp - ga).abs().max()) for gp, ga in zip(grads_p, grads_a)),
            "scale": float(out_a.abs().max())}


def time_fwd_bwd(fn: Callable, bounds: list[int], device: str, dtype: torch.dtype, repeats: int = 20) -> float:
    """Median seconds of one forward+backward of ``fn`` over a packed row."""
    n = bounds[-1]
    q = torch.randn(n, 12, 64, device=device, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(n, 12, 64, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    times = []
    for _ in range(repeats + 3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn(q, k, v, bounds).sum().backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times[3:])[len(times[3:]) // 2]


def check_varlen_models(device: str = "cuda", dtype: torch.dtype = torch.bfloat16, shape: dict | None = None,
                        lengths=GPU_LENGTHS, timing: bool = True) -> Check:
    """Every family in ``FAMILIES``: a packed row against its examples alone, forward and backward under
    autocast in ``dtype`` with fp32 weights, through the kernel a run uses on ``device``; on CUDA also the
    kernel's fwd+bwd time on bare tensors against a per-example loop."""
    shape = shape or GPU_SHAPE
    head = shape["hidden"] // shape["heads"]
    kernel = cuda_kernel()
    route = attention.describe(device, False, dtype, head)
    lines, figures, passed = [], {"route": route}, unserved(dtype, head, kernel) is None and kernel.fn is not None
    if not passed:
        lines.append(f"the varlen kernel is not used: {route}")
    for family in FAMILIES:
        diff = packed_vs_alone(family_model(family, **shape), lengths, device, dtype)
        ok, line = model_line(family, diff, dtype)
        passed, figures[family] = passed and ok, diff
        lines.append(line)
    if timing and torch.device(device).type == "cuda":
        rows = [0] + [64 * (k + 1) + 40 * (k % 3) for k in range(24)]
        bounds = list(np.cumsum(rows).tolist())
        fast, loop = (time_fwd_bwd(fn, bounds, device, dtype) for fn in (varlen, alone))
        figures.update(varlen_ms=fast * 1e3, loop_ms=loop * 1e3)
        lines.append(f"kernel alone fwd+bwd {fast * 1e3:.2f} ms vs {loop * 1e3:.2f} ms per-example loop "
                     f"({len(rows) - 1} examples, {bounds[-1]} tokens)")
    tokens = figures[FAMILIES[0]]["tokens"]
    summary = f"{route}; {tokens}-token row of {len(lengths)} examples vs each alone, {str(dtype)[6:]} autocast, " \
              f"fp32 weights: " + "; ".join(lines)
    return Check("varlen", passed, summary, figures)
