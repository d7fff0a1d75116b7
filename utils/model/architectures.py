"""Which Hugging Face causal LMs the pipeline trains, and each one's default LoRA targets.

Training runs packed, padding-free rows through ``packed_varlen`` (utils/model/attention.py). That is correct
for an architecture only when its attention goes through transformers' attention interface with the example
bounds and nothing else in it mixes the examples of a row. No table of trusted types says so: before a stage
writes anything, ``utils/model/packing_check.py`` proves it for the model's type on a tiny random twin of its
config (packed == alone: losses, gradients, generation), once per type and library versions, and a type that
fails is refused in one line naming what broke.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from utils.common.errors import UserError
from utils.model.gguf import gguf_architecture
from utils.model.packing_check import Verdict, check_packing


def check_model_dir(path: str | Path) -> Verdict | None:
    """Refuse a local HF model directory (or .gguf) whose type cannot train packed, from its config alone, before a
    stage writes anything. Hub names and directories without a readable config are left to the loader, whose
    errors name them, and to ``check_model`` once loaded."""
    from transformers import AutoConfig

    path = Path(path)
    if path.suffix == ".gguf" and path.is_file():
        model_type = _gguf_model_type(path)
        try:
            config = AutoConfig.for_model(model_type)
        except (ValueError, KeyError):
            raise UserError(f"{path}: GGUF architecture {model_type!r} is not a model type transformers knows; "
                            "use a GGUF of a transformers architecture or an HF model directory") from None
        return check_packing(config, str(path))
    if not (path / "config.json").is_file():
        return None
    try:
        model_type = json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError, AttributeError, KeyError):
        return None
    if getattr(config, "model_type", None) != model_type:
        return None
    return check_packing(config, str(path))


_GGUF_TYPES = {"gptneox": "gpt_neox"}
"""GGUF ``general.architecture`` names that differ from the transformers ``model_type`` they convert to."""


def _gguf_model_type(path: Path) -> str | None:
    """The transformers ``model_type`` of a GGUF file, from its header alone (no tensor is read)."""
    name = gguf_architecture(path)
    return _GGUF_TYPES.get(name, name)


def model_type_of(model) -> str:
    """The ``model_type`` of a (possibly peft-wrapped) model."""
    return getattr(_base(model).config, "model_type", None)


def check_model(model, where: str = "--model_path") -> Verdict:
    """Refuse a loaded model whose type cannot train packed (the verdict is cached: a second call is free)."""
    return check_packing(_base(model).config, where)


def default_lora_targets(model) -> list[str]:
    """Every linear layer of the model's decoder (attention and MLP), by the leaf names LoRA targets: read from the
    model itself, so every architecture has its own. An MoE model's fused experts and its router are parameters,
    not linear layers: they stay frozen (``frozen_experts`` says how many weights that leaves out)."""
    from transformers.pytorch_utils import Conv1D

    decoder = _base(model).get_decoder()
    names = {name.rsplit(".", 1)[-1] for name, module in decoder.named_modules()
             if isinstance(module, (torch.nn.Linear, Conv1D)) and name}
    if not names:
        raise UserError(f"model_type {model_type_of(model)!r}: its decoder has no linear layers for LoRA to adapt; "
                        "name them in lora_config.target_modules or train the full model (no lora_config)")
    return sorted(names)


def frozen_experts(model) -> int:
    """The weights of an MoE model's fused experts (3-D parameters), which default LoRA targets do not adapt."""
    return sum(p.numel() for p in _base(model).get_decoder().parameters() if p.dim() == 3)


def _base(model):
    return model.get_base_model() if hasattr(model, "get_base_model") else model


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
