"""LoRA wrapping: which layers get adapters, and the peft model that trains only them.

Quantized (QLoRA) loading sits beside this (quantization.py): it changes how the base weights are held, not the loop.
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.common.errors import UserError


@dataclass
class LoraSettings:
    r: int = 16
    lora_alpha: float = 32.0
    lora_dropout: float = 0.05
    target_modules: list[str] | None = None
    """None: every linear layer of the decoder (the stages read them from the model:
    utils/model/architectures.default_lora_targets; called directly, peft's ``all-linear`` picks the same layers)."""
    bias: str = "none"
    modules_to_save: list[str] | None = None


def apply_lora(model, lora: LoraSettings):
    """Wrap ``model`` with a peft LoRA adapter; only the adapter (and modules_to_save) train."""
    from peft import LoraConfig, get_peft_model  # peft costs a second at import; full fine-tuning never needs it

    targets = list(lora.target_modules or [])
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    missing = [m for m in targets if m not in names]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                         if type(m).__name__ in ("Linear", "Conv1D")} - {"lm_head", "embed_out"})
        raise UserError(f"lora_config.target_modules: {missing} not found in the model (its layers: "
                        f"{', '.join(linear[:10])}); leave target_modules out to adapt every attention and MLP "
                        "layer of this architecture")
    # GPT-2's Conv1D layers hold their weight as [in, out]; peft must be told (it would warn and guess)
    conv1d = any(type(m).__name__ == "Conv1D" and name.rsplit(".", 1)[-1] in targets
                 for name, m in model.named_modules())
    config = LoraConfig(r=lora.r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout,
                        target_modules=targets or "all-linear", bias=lora.bias, fan_in_fan_out=conv1d,
                        modules_to_save=lora.modules_to_save, task_type="CAUSAL_LM")
    return get_peft_model(model, config)
