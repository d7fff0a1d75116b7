"""QLoRA: the base model's linear layers held in 4 bits (bitsandbytes ``Linear4bit``), LoRA on top.

Quantizing changes how the base weights are held, not the loop: transformers replaces every ``nn.Linear``
but the output head with ``Linear4bit`` while loading (``BitsAndBytesConfig``), peft wraps those layers with
its 4-bit-aware LoRA layers, and the loop trains the adapter as for any LoRA run. Embeddings, norms and the
output head stay in full precision.

peft's ``prepare_model_for_kbit_training`` is not called: it casts fp16/bf16 weights to fp32 (the base is
already loaded in fp32), freezes the base (``get_peft_model`` does), and turns gradient checkpointing on,
which here is ``training_params.gradient_checkpointing``'s choice, applied and announced by the run set-up.
"""
from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.util

import torch

from utils.common.errors import UserError
from utils.model.modeling import load_model

REQUIREMENTS = "requirements-qlora.txt"


def require_bitsandbytes(where: str = "quantization") -> None:
    """One line naming the fix when bitsandbytes is not installed."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise UserError(f"{where}: a 4-bit base needs bitsandbytes, which is not installed; run "
                        f"`make qlora` (or pip install -r {REQUIREMENTS}), or remove the quantization block")


def bnb_config(settings: dict):
    """The transformers ``BitsAndBytesConfig`` of a config's quantization block (as training_summary.json
    saves it): its ``load_in_4bit`` and ``bnb_4bit_*`` fields, the compute dtype named as a string."""
    require_bitsandbytes()
    from transformers import BitsAndBytesConfig

    kwargs = {k: v for k, v in settings.items() if k == "load_in_4bit" or k.startswith("bnb_4bit_")}
    kwargs["bnb_4bit_compute_dtype"] = getattr(torch, kwargs.get("bnb_4bit_compute_dtype", "float32"))
    return BitsAndBytesConfig(**kwargs)


def load_base(model_path: str, quantization: dict | None, trust_remote_code: bool = False,
              dequantize: bool = False):
    """The base model: as saved without ``quantization`` (a config's quantization block, as training_summary.json
    saves it); with it, held in 4 bits as training holds it (QLoRA), and with ``dequantize`` in plain layers
    again: the weights the adapter was trained against, which a merge adds the adapter to exactly."""
    if quantization is None:
        return load_model(model_path, trust_remote_code=trust_remote_code)
    model = load_model(model_path, trust_remote_code=trust_remote_code, quantization_config=bnb_config(quantization))
    model = prepare_4bit(model, model_path)
    return dequantized(model) if dequantize else model


def check_targets(skeleton, target_modules: list[str]) -> None:
    """Every LoRA target must be an ``nn.Linear``: the only layer type bitsandbytes holds in 4 bits.

    ``skeleton`` is the model built without weights (``modeling.empty_model``), so this costs no loading.
    """
    for name in target_modules:
        kinds = {type(m).__name__ for n, m in skeleton.named_modules() if n.rsplit(".", 1)[-1] == name}
        odd = sorted(k for k in kinds if k != "Linear")
        if odd:
            raise UserError(f"lora_config.target_modules: {name} is a {odd[0]} layer in this model, which "
                            "bitsandbytes cannot hold in 4 bits; remove the quantization block (plain LoRA) "
                            "or target nn.Linear layers only")


def quantized_layers(model) -> list[str]:
    """Names of the 4-bit layers of ``model`` (under any peft wrapping)."""
    import bitsandbytes as bnb

    return [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]


def prepare_4bit(model, source: str):
    """Check ``model`` was loaded in 4 bits, and make its CPU forward the one that training uses.

    bitsandbytes repacks a layer's weights for a bf16 inference kernel the first time it runs in eval mode
    on a CPU with avx512_bf16: evaluation would then compute in bf16 what training computed in the compute
    dtype, and the repacking fails for layers narrower than a 64-value quantization block. It is turned off.
    """
    layers = quantized_layers(model)
    if not layers:
        raise UserError(f"{source}: no layer was quantized to 4 bits (bitsandbytes holds nn.Linear layers only); "
                        "remove the quantization block for this model")
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    _release_checkpoint_memory(model)
    return model


def _release_checkpoint_memory(model) -> None:
    """Let go of the full-precision checkpoint once its linear layers are in 4 bits.

    transformers memory-maps the safetensors file; the embeddings and norms (kept in full precision) still
    point into it, so the whole file, read once to be quantized, stayed mapped and resident. They are copied
    out (the mapping closes), and glibc is asked to return the quantization's freed temporaries to the system:
    on SmolLM2-135M the process holds about 360 MiB less afterwards (docs/BENCHMARKS.md).
    """
    for tensor in [*model.parameters(), *model.buffers()]:
        if tensor.device.type == "cpu" and tensor.dtype != torch.uint8:
            tensor.data = tensor.data.clone()
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):  # not glibc: nothing to trim
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def dequantized(model):
    """The 4-bit ``model`` with every layer dequantized to its loading dtype: the weights training saw, in
    plain ``nn.Linear`` layers (merging LoRA into a 4-bit layer would round the sum to 4 bits again)."""
    plain = model.dequantize()
    for attr in ("is_loaded_in_4bit", "is_quantized"):
        if hasattr(plain, attr):
            setattr(plain, attr, False)
    return plain
