"""The Chat tab: talk to any final/ (LoRA adapter or full model) or export through the chat template it was
trained with, token by token (transformers' TextIteratorStreamer), optionally with its base model beside it."""
from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from utils.common.errors import UserError
from utils.data.fingerprint import tokenizer_fingerprint
from utils.data.templates import get_template, model_type_for
from utils.data.tokenizer import hf_dir_for, load_tokenizer
from utils.eval.models import load_eval_model, read_summary


def find_models(root: Path, max_depth: int = 6) -> list[Path]:
    """Every trained model under ``root``: final/ of training runs and exports (weights + training_summary.json);
    the SFT runs' final/ first, newest first (the tab opens on the model the user trained last), then the rest."""
    root = Path(root)
    found = set()
    if not root.is_dir():
        return []
    for depth in range(1, max_depth + 1):
        for summary in root.glob("/".join(["*"] * depth) + "/training_summary.json"):
            folder = summary.parent
            if any((folder / n).is_file() for n in ("adapter_config.json", "config.json")) \
                    and not folder.name.startswith("."):
                found.add(folder)
    return sorted(found, key=_newest_sft_first)


def _newest_sft_first(folder: Path) -> tuple:
    if folder.name == "final" and read_summary(folder).get("stage") == "sft":
        return (0, -(folder / "training_summary.json").stat().st_mtime, str(folder))
    return (1, 0.0, str(folder))


def template_name(model_dir: Path) -> tuple[str, str]:
    """(template, where it came from): the one the model was trained with, else the tokenizer's own."""
    trained = read_summary(model_dir).get("template")
    if isinstance(trained, dict) and trained.get("name"):
        return trained["name"], "training_summary.json"
    return "tokenizer", "the tokenizer's chat template (no template recorded)"


def base_of(model_dir: Path) -> str | None:
    """The model an adapter or SFT run started from (adapter_config.json, else training_summary.json)."""
    try:
        base = json.loads((Path(model_dir) / "adapter_config.json").read_text()).get("base_model_name_or_path")
    except (OSError, ValueError, AttributeError):
        base = None
    trained_on = read_summary(model_dir).get("model_path")
    if trained_on and Path(trained_on).exists():
        return trained_on  # the copy training read (adapter_config.json may name the base by its Hub id)
    return base or trained_on or None


@dataclass
class LoadedModel:
    path: str
    model: object
    tokenizer: object
    template: object
    note: str


class ModelCache:
    """Models loaded once and kept (one per path); a failure is a UserError with the reason in one line."""

    def __init__(self, device: str = "cpu") -> None:
        self.device = device
        self.models: dict[str, LoadedModel] = {}
        self._lock = threading.Lock()

    def get(self, path: str | Path, tokenizer_dir: str | Path | None = None) -> LoadedModel:
        key = str(path)
        with self._lock:
            if key not in self.models:
                self.models[key] = load_chat_model(Path(path), tokenizer_dir, self.device)
            return self.models[key]


def load_chat_model(path: Path, tokenizer_dir: str | Path | None = None, device: str = "cpu") -> LoadedModel:
    """Model, tokenizer and template of ``path``; the tokenizer is the model's own (or ``tokenizer_dir``)."""
    if not Path(path).exists():
        raise UserError(f"{path}: not found (deleted or moved?); refresh the list")
    tok_dir = str(tokenizer_dir or path)
    try:
        tokenizer = load_tokenizer(tok_dir)
        fingerprint = tokenizer_fingerprint(hf_dir_for(tok_dir))
        model = load_eval_model(str(path), tokenizer, fingerprint, tok_dir, device)
    except UserError:
        raise
    except Exception as err:  # any loading failure (damaged weights, missing files) is one line in the page
        raise UserError(f"{path}: could not load ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    name, origin = template_name(Path(tokenizer_dir or path))
    template = get_template(name, tokenizer, model_type_for(hf_dir_for(tok_dir)))
    return LoadedModel(str(path), model, tokenizer, template, f"template {name} (from {origin})")


def to_messages(history: list[dict], message: str, system: str = "") -> list[dict]:
    """The conversation for the template: the system prompt, earlier turns (role/content) and the new message."""
    out = [{"role": "system", "content": system}] if system.strip() else []
    for turn in history:
        if turn.get("role") in ("user", "assistant") and isinstance(turn.get("content"), str):
            out.append({"role": turn["role"], "content": turn["content"]})
    return out + [{"role": "user", "content": message}]


def stream_reply(loaded: LoadedModel, messages: list[dict], max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 1234) -> Iterator[str]:
    """The reply so far, after each new piece of text; generation runs in a thread and stops at a stop token."""
    import torch
    from transformers import TextIteratorStreamer

    prompt = loaded.template.encode_prompt(messages)
    ids = torch.tensor([prompt], device=next(loaded.model.parameters()).device)
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=300)
    sample = temperature > 0
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=int(max_new_tokens),
                  do_sample=sample, temperature=temperature if sample else None, top_p=top_p if sample else None,
                  top_k=None, eos_token_id=sorted(set(loaded.template.stop_token_ids)),
                  pad_token_id=loaded.tokenizer.pad_token_id, use_cache=True, streamer=streamer)
    failure: list[BaseException] = []

    def run() -> None:
        torch.manual_seed(seed)
        try:
            with torch.no_grad():
                loaded.model.generate(**kwargs)
        except Exception as err:  # reported to the page after the stream ends
            failure.append(err)
            streamer.on_finalized_text("", stream_end=True)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    thread.join()
    if failure:
        raise UserError(f"generation failed: {type(failure[0]).__name__}: {str(failure[0]).splitlines()[0][:200]}")
    if not text:
        yield ""
