"""QLoRA in the SFT stage: refuse a base that cannot be held in 4 bits before anything is written, and say how
the base is held (utils/parallel/quantization.py holds the 4-bit parts and loads the base)."""
from __future__ import annotations

from utils.common.errors import UserError
from utils.model.architectures import default_lora_targets
from utils.model.gguf import low_bit_types
from utils.model.modeling import empty_model
from utils.parallel.lora import LoraSettings
from utils.parallel.quantization import check_targets, require_bitsandbytes
from utils.train.config import QuantizationParams


def check_quantizable(quant: QuantizationParams, lora: LoraSettings, model_path: str, sharding: str,
                      trust_remote_code: bool = False) -> None:
    """Everything that would stop a 4-bit run, checked without loading weights: one line each."""
    require_bitsandbytes()
    if sharding != "none":
        raise UserError(f"quantization: a 4-bit base is not supported with {sharding} sharding (its sharding needs "
                        "matching storage dtypes, untested here); launch with DDP (config/accelerate/multi_gpu.yaml) "
                        "or one process, or remove the quantization block")
    low = low_bit_types(model_path)
    if low and not quant.requantize_gguf:
        raise UserError(f"--model_path {model_path}: this GGUF is already quantized ({', '.join(low)}); 4-bit "
                        "loading would round its weights a second time. Set quantization.requantize_gguf: true "
                        "to accept that, or train plain LoRA on it (remove the quantization block)")
    skeleton = empty_model(model_path, trust_remote_code)
    targets = lora.target_modules if lora.target_modules is not None else default_lora_targets(skeleton)
    check_targets(skeleton, list(targets))


def describe_base(quant: QuantizationParams, model_path: str) -> str:
    """The run plan's line on how the base weights are held."""
    low = low_bit_types(model_path)
    return quant.describe() + (f" (re-quantized from GGUF {', '.join(low)}: requantize_gguf)" if low else "")
