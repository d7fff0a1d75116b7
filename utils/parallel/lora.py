"""LoRA wrapping: which layers get adapters, and the peft model that trains only them.

Quantized (QLoRA) loading sits beside this (quantization.py): it changes how the base weights are held, not the loop.
"""
from __future__ import annotations

from dataclasses import dataclass

from utils.common.config_schema import setting
from utils.common.errors import UserError

LORA_BIASES = ("none", "all", "lora_only")
"""Which biases a LoRA adapter trains (peft's bias setting)."""


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings (peft); absent or null = full fine-tuning."""

    r: int = setting(16, minimum=1)
    """Rank of the low-rank update."""
    lora_alpha: float = setting(32.0, exclusiveMinimum=0)
    """Scale of the update (alpha / r)."""
    lora_dropout: float = setting(0.05, minimum=0, maximum=1)
    """Dropout on the LoRA input."""
    # None: the stages read the layers from the model (utils/model/architectures.default_lora_targets); called
    # directly, peft's ``all-linear`` picks the same layers.
    target_modules: list[str] | None = setting(None, type="array", minItems=1)
    """Module names to adapt. Absent: every attention and MLP layer of the architecture (q_proj, k_proj, v_proj,
    o_proj, gate_proj, up_proj, down_proj for Llama, Mistral, Qwen2, Gemma; qkv_proj, o_proj, gate_up_proj,
    down_proj for Phi-3; c_attn, c_proj, c_fc for GPT-2; query_key_value, dense, dense_h_to_4h, dense_4h_to_h for
    GPT-NeoX)."""
    bias: str = setting("none", enum=LORA_BIASES)
    """Which biases are trained."""
    modules_to_save: list[str] | None = None
    """Modules trained in full beside the adapter (e.g. embed_tokens, lm_head)."""


def apply_lora(model, lora: LoraSettings):
    """Wrap ``model`` with a peft LoRA adapter; only the adapter (and modules_to_save) train."""
    from peft import LoraConfig, get_peft_model

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
