"""A tiny random twin of a model's config: the same architecture and attention features at a few thousandth of
the size, built in a fraction of a second to prove that packed training is exact for the model's type.

Kept from the config: the model type and every switch (grouped or multi-query heads, head size, QK-norm,
rotary settings, partial rotary, soft-capping, sinks, biases, norms, tied embeddings). Shrunk: the width (4
heads of the original head size), the MLP (64), the vocabulary (256), MoE to 4 experts (2 routed per token),
the layers to one of each kind (every distinct combination of the per-layer lists such as ``layer_types`` or
``no_rope_layers``; at least two, the second an MoE layer where the config begins with dense ones), and a
sliding window to 6 tokens, so that the check's examples are longer than it. Soft-caps shrink to the twin's
scale: a random twin's attention scores are about 0.01 and its logits under 1, where Gemma 2's caps of 50 and 30
are the identity and a packed path that dropped them would pass; caps of 0.002 and 0.1 bend every score.
"""
from __future__ import annotations

import copy

import torch

VOCAB = 256
WINDOW = 6
WIDTH = 64
EXPERTS, ROUTED = 4, 2
MAX_LAYERS = 6
SOFTCAPS = {"attn_logit_softcapping": 0.002, "final_logit_softcapping": 0.1}
"""Each soft-cap the packed path and the loss apply, at a value that bites the twin's scores and logits."""

_TOKEN_KEYS = ("bos_token_id", "eos_token_id", "pad_token_id")
_DROPPED = ("quantization_config", "auto_map", "_name_or_path", "architectures", "transformers_version",
            "torch_dtype", "dtype")
_DENSE_FIRST = ("first_k_dense_replace", "num_dense_layers", "first_dense_layers", "n_dense_layers")
_EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_ROUTED = ("num_experts_per_tok", "moe_topk", "top_k", "num_selected_experts", "moe_k")
_SHARED = ("n_shared_experts", "num_shared_experts", "moe_num_shared_experts")


def twin_config(config):
    """A config of the same class as ``config`` describing its tiny twin (``config`` is left unchanged)."""
    data = {k: copy.deepcopy(v) for k, v in config.to_dict().items() if k not in _DROPPED}
    keys = _keys(config)
    layers = data.get(keys["num_hidden_layers"])
    if isinstance(layers, int) and layers > 0:
        _shrink_layers(data, layers, keys["num_hidden_layers"])
    _shrink_width(data, keys)
    _shrink_experts(data)
    for key in _TOKEN_KEYS:
        data[key] = _small_ids(data.get(key), {"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}[key])
    data["vocab_size"] = VOCAB
    if isinstance(data.get("sliding_window"), int) and data["sliding_window"] > WINDOW:
        data["sliding_window"] = WINDOW
    for key, cap in SOFTCAPS.items():
        if isinstance(data.get(key), (int, float)) and data[key] > 0:
            data[key] = cap
    for key, value in list(data.items()):
        if "dropout" in key and isinstance(value, float):
            data[key] = 0.0
    data["use_cache"] = False
    return type(config).from_dict(data)


def build_twin(config, attn_implementation: str = "eager", seed: int = 0):
    """The twin model of ``config`` (float32, on the CPU), its weights drawn from ``seed`` without touching the
    global random state."""
    from transformers import AutoModelForCausalLM

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(twin_config(config), attn_implementation=attn_implementation,
                                                 dtype=torch.float32)
    return model.eval()


def _keys(config) -> dict:
    """The config's own names of the standard fields (GPT-2 says n_layer for num_hidden_layers)."""
    names = ("num_hidden_layers", "hidden_size", "num_attention_heads", "num_key_value_heads", "intermediate_size")
    mapped = getattr(config, "attribute_map", {}) or {}
    return {name: mapped.get(name, name) for name in names}


def _shrink_layers(data: dict, layers: int, key: str) -> None:
    """One layer of each distinct combination of the per-layer lists (lists as long as the layers)."""
    per_layer = sorted(k for k, v in data.items() if isinstance(v, list) and len(v) == layers and k != "architectures")
    kept, seen = [], set()
    for i in range(layers):
        signature = tuple(repr(data[k][i]) for k in per_layer)
        if signature not in seen and len(kept) < MAX_LAYERS:
            seen.add(signature)
            kept.append(i)
    for i in range(layers):  # at least two layers, so a layer sees what another computed
        if len(kept) >= 2:
            break
        if i not in kept:
            kept.append(i)
    kept.sort()
    for k in per_layer:
        data[k] = [data[k][i] for i in kept]
    for k in ("mlp_only_layers",):  # indices of layers: those kept keep their role
        if isinstance(data.get(k), list):
            data[k] = [kept.index(i) for i in data[k] if i in kept]
    for k in _DENSE_FIRST:
        if isinstance(data.get(k), int) and data[k] > 0:
            data[k] = 1
    if "max_window_layers" in data and isinstance(data["max_window_layers"], int):
        data["max_window_layers"] = min(data["max_window_layers"], len(kept))
    data[key] = len(kept)


def _shrink_width(data: dict, keys: dict) -> None:
    """4 heads (keys and values grouped as before) of the original head size; MLP widths 64."""
    heads_key, kv_key, hidden_key = keys["num_attention_heads"], keys["num_key_value_heads"], keys["hidden_size"]
    heads, hidden = data.get(heads_key), data.get(hidden_key)
    if not (isinstance(heads, int) and isinstance(hidden, int) and heads > 0):
        return
    head_dim = data.get("head_dim") or hidden // heads
    kv = data.get(kv_key) or heads
    new_heads = min(heads, 4)
    if kv == heads:
        new_kv = new_heads
    elif kv == 1:
        new_kv = 1
    else:
        new_kv = max(1, new_heads // min(heads // kv, new_heads // 2 or 1))
    data[heads_key] = new_heads
    if kv_key in data and data[kv_key] is not None:
        data[kv_key] = new_kv
    data[hidden_key] = new_heads * head_dim
    if data.get("head_dim") is not None:
        data["head_dim"] = head_dim
    for key, value in list(data.items()):
        if key.endswith(("intermediate_size", "n_inner", "ffn_hidden_size", "ffn_dim")) and isinstance(value, int):
            data[key] = WIDTH


def _shrink_experts(data: dict) -> None:
    for key in _EXPERT_COUNTS:
        if isinstance(data.get(key), int) and data[key] > EXPERTS:
            data[key] = EXPERTS
    for key in _ROUTED:
        if isinstance(data.get(key), int) and data[key] > ROUTED:
            data[key] = ROUTED
    for key in _SHARED:
        if isinstance(data.get(key), int) and data[key] > 1:
            data[key] = 1
    if isinstance(data.get("n_group"), int):
        data["n_group"], data["topk_group"] = 1, 1


def _small_ids(value, default: int):
    if isinstance(value, list):
        return [default] if value else value
    return default if isinstance(value, int) else value
