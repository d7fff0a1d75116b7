"""Tiny random causal LMs of each supported layout, built from their transformers configs (no download)."""
from __future__ import annotations

from pathlib import Path


def tiny_config(model_type: str, vocab: int, bos: int = 1, eos: int = 2, pad: int = 0):
    """A 2-layer, 32-wide config of ``model_type`` (a sliding window of 8 for Mistral, so packed examples
    are longer than it)."""
    # transformers costs seconds to import; deferred so collection stays fast
    import transformers as t

    ids = {"vocab_size": vocab, "bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad}
    common = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4, "intermediate_size": 64,
              "max_position_embeddings": 256, **ids}
    return {
        "gpt2": lambda: t.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=256, **ids),
        "gpt_neox": lambda: t.GPTNeoXConfig(rotary_pct=0.25, **common),
        "qwen2": lambda: t.Qwen2Config(num_key_value_heads=2, **common),
        "gemma": lambda: t.GemmaConfig(num_key_value_heads=2, head_dim=8, **common),
        "phi3": lambda: t.Phi3Config(num_key_value_heads=2, **common),
        "mistral": lambda: t.MistralConfig(num_key_value_heads=2, sliding_window=8, **common),
        "llama": lambda: t.LlamaConfig(num_key_value_heads=2, **common),
        **{name: lambda name=name: _newer_config(name, common) for name in NEWER_ARCHITECTURES},
    }[model_type]()


NEWER_FEATURES = {
    "qwen3": {"num_key_value_heads": 2},
    "qwen3_moe": {"num_key_value_heads": 2, "num_experts": 4, "num_experts_per_tok": 2,
                  "moe_intermediate_size": 32, "router_aux_loss_coef": 0.01},
    "gemma2": {"num_key_value_heads": 2, "head_dim": 8, "sliding_window": 8, "attn_logit_softcapping": 50.0,
               "final_logit_softcapping": 30.0},
    "gemma3_text": {"num_key_value_heads": 2, "head_dim": 8, "sliding_window": 8,
                    "layer_types": ["sliding_attention", "full_attention"]},
    "olmo2": {},
    "smollm3": {"num_key_value_heads": 2, "no_rope_layers": [1, 0]},
    "granite": {"num_key_value_heads": 2, "logits_scaling": 4.0, "embedding_multiplier": 2.0,
                "residual_multiplier": 0.5, "attention_multiplier": 0.25},
    "phi": {"partial_rotary_factor": 0.5},
    "starcoder2": {"num_key_value_heads": 2, "sliding_window": 8},
    "mixtral": {"num_key_value_heads": 2, "num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 8,
                "router_aux_loss_coef": 0.02},
}
"""Each newer layout's attention features, kept in its tiny config: grouped heads, windows (one layer of each
kind), soft-capping, QK-norm (qwen3, olmo2, gemma3), layers without rotary, logit scaling, MoE routing."""
NEWER_ARCHITECTURES = tuple(NEWER_FEATURES)


def _newer_config(model_type: str, common: dict):
    from transformers import AutoConfig

    return AutoConfig.for_model(model_type, **common, **NEWER_FEATURES[model_type])


def tiny_model(model_type: str, vocab: int, seed: int = 0, **ids):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(tiny_config(model_type, vocab, **ids))


def save_tiny_model(model_type: str, tokenizer, out: Path) -> Path:
    """A tiny ``model_type`` sized to ``tokenizer``, saved with save_pretrained (safetensors)."""
    model = tiny_model(model_type, len(tokenizer), bos=tokenizer.bos_token_id, eos=tokenizer.eos_token_id,
                       pad=tokenizer.pad_token_id)
    model.save_pretrained(out)
    return out


ARCHITECTURES = ("gpt2", "gpt_neox", "qwen2", "gemma", "phi3", "mistral")
"""The layouts beyond Llama the tests train end to end through every script."""
