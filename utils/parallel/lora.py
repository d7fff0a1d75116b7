"""LoRA wrapping: which layers get adapters, and the peft model that trains only them.

Quantized (QLoRA) loading sits beside this (quantization.py): it changes how the base weights are held, not the loop.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from utils.common.errors import UserError


@dataclass
class LoraSettings:
    r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    bias: str = "none"
    modules_to_save: list[str] | None = None


def apply_lora(model, lora: LoraSettings):
    """Wrap ``model`` with a peft LoRA adapter; only the adapter (and modules_to_save) train."""
    from peft import LoraConfig, get_peft_model  # peft costs a second at import; full fine-tuning never needs it

    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in lora.target_modules if m not in names]
    if missing:
        raise UserError(f"lora_config.target_modules: {missing} not found in the model "
                        f"(it has e.g. {sorted(n for n in names if n.endswith('proj'))[:8]})")
    config = LoraConfig(r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                        target_modules=list(lora.target_modules), bias=lora.bias,
                        modules_to_save=lora.modules_to_save, task_type="CAUSAL_LM")
    return get_peft_model(model, config)
