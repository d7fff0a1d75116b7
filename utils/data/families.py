"""Which model family a tokenizer's chat template belongs to (for notes and the system-role fold)."""
from __future__ import annotations

from utils.data.tokenizer import special_token_ids

FAMILY_NAMES = {"llama2": "Llama 2", "llama3": "Llama 3", "qwen": "Qwen", "chatml": "ChatML",
                "gemma": "Gemma", "mistral": "Mistral", "phi3": "Phi-3", "generic": "generic"}


_FAMILY_MARKERS = (  # checked in this order; the first family with a marker present wins
    ("llama3", ("<|start_header_id|>", "<|eot_id|>")),
    ("gemma", ("<start_of_turn>",)),
    ("phi3", ("<|assistant|>", "<|user|>")),
    ("chatml", ("<|im_start|>",)),
    ("llama2", ("<<SYS>>",)),
    ("mistral", ("[INST]",)),
)


def detect_family(tokenizer, model_type: str | None = None) -> str:
    """Model family from the chat template text, else the special tokens, else the name and ``model_type``.

    The template text comes first because a tokenizer may carry tokens of several families
    (ours has ``<|im_start|>`` whatever template it is given).
    """
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else ""
    name = f"{tokenizer.name_or_path} {model_type or ''}".lower()
    for text in (template, " ".join(special_token_ids(tokenizer))):
        for family, markers in _FAMILY_MARKERS:
            if any(m in text for m in markers):
                return "qwen" if family == "chatml" and "qwen" in name else family
    for family in ("gemma", "mistral", "phi3", "qwen", "llama"):
        if family in name:
            return {"llama": "llama2"}.get(family, family)
    return "generic"
