"""Which Hugging Face causal LM layouts the pipeline trains, and each one's default LoRA targets.

Training runs packed, padding-free rows through ``packed_sdpa`` (utils/model/attention.py). That is correct
for an architecture only when its attention goes through transformers' attention interface with the example
bounds and its positions come from ``position_ids`` (rotary or absolute): ``tests/model/test_architectures.py``
checks, for each type listed here, that an example packed with others gives the same hidden states as the
example alone under transformers' own SDPA. Any other ``model_type`` is refused in one line before a stage
writes anything, rather than trained with attention leaking between packed examples.
"""
from __future__ import annotations

import json
from pathlib import Path

from utils.common.errors import UserError
from utils.model.gguf import gguf_architecture

_LLAMA_LIKE = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")

LORA_TARGETS: dict[str, tuple[str, ...]] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "phi3": ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"),
    "gpt2": ("c_attn", "c_proj", "c_fc"),
    "gpt_neox": ("query_key_value", "dense", "dense_h_to_4h", "dense_4h_to_h"),
}
"""Supported ``model_type`` -> every linear layer of its attention and MLP (the default LoRA targets)."""


def _refusal(where: str, model_type) -> UserError:
    return UserError(
        f"{where}: model_type {model_type!r} is not supported (packed training is verified for "
        f"{', '.join(sorted(LORA_TARGETS))}); convert the model to one of these or use another base model")


def check_model_type(model_type, where: str) -> str:
    """The model type itself when the pipeline supports it, else one line naming the supported ones."""
    if model_type not in LORA_TARGETS:
        raise _refusal(where, model_type)
    return model_type


def check_model_dir(path: str | Path) -> None:
    """Refuse an unsupported local HF model directory from its config.json alone (before a stage writes).

    A .gguf file is checked from its header's ``general.architecture``. Hub names and directories without a
    readable config.json are left to the loader, whose errors name them, and to ``check_model`` once loaded.
    """
    if Path(path).suffix == ".gguf" and Path(path).is_file():
        check_model_type(_gguf_model_type(Path(path)), str(path))
        return
    config = Path(path) / "config.json"
    if not config.is_file():
        return
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return
    check_model_type(model_type, str(path))


_GGUF_TYPES = {"gptneox": "gpt_neox"}
"""GGUF ``general.architecture`` names that differ from the transformers ``model_type`` they convert to."""


def _gguf_model_type(path: Path) -> str | None:
    """The transformers ``model_type`` of a GGUF file, from its header alone (no tensor is read)."""
    name = gguf_architecture(path)
    return _GGUF_TYPES.get(name, name)


def model_type_of(model) -> str:
    """The ``model_type`` of a (possibly peft-wrapped) model."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base.config, "model_type", None)


def check_model(model, where: str = "--model_path") -> str:
    """Refuse a loaded model of an unsupported type; returns its type."""
    return check_model_type(model_type_of(model), where)


def default_lora_targets(model) -> list[str]:
    """Every linear layer of the model's attention and MLP (its type must be supported)."""
    return list(LORA_TARGETS[check_model(model)])


def position_limit(config) -> tuple[int | None, str]:
    """The most token positions a model takes, and the config field that says so: GPT-2's ``n_positions``
    (absolute positions: an index past it crashes), else ``max_position_embeddings`` (rotary: the length trained)."""
    for name in ("n_positions", "max_position_embeddings"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value, name
    return None, ""


def check_positions(config, needed: int, where: str, what: str, fix: str) -> None:
    """Refuse ``needed`` positions past the limit of the model of ``config`` in one line: both numbers, and what
    to change."""
    limit, field = position_limit(config)
    if limit is not None and needed > limit:
        raise UserError(f"{where}: the model takes at most {limit} positions ({field}), but {what} needs {needed}; "
                        f"{fix}")
