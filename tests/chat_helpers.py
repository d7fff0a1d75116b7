"""Helpers for the SFT-data and export tests: rows read through a dataset entry, the toy tokenizer with another
chat_template, the prepare stage's arguments, and held-out conversations (a single turn, a system prompt before
several turns with a newline and surrounding spaces in the content, text that looks like Jinja and quotes, a
system prompt of two paragraphs) that the tests render through a trained template's exported Jinja."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from utils.data.conversations import iter_conversations
from utils.data.dataset_entry import DatasetSpec
from utils.data.tokenizer import load_tokenizer

CHAT_TEMPLATES = Path(__file__).parent / "data" / "chat_templates"

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "The answer is 5."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort: b a c"},
     {"role": "assistant", "content": "a b c"}, {"role": "user", "content": "Now reverse it.\nPlease."},
     {"role": "assistant", "content": " c b a "}],
    [{"role": "user", "content": "Hi \"there\" \\ {{ not jinja }} {% raw %}"}, {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}],
    [{"role": "system", "content": "You count words.\n\nOnly digits."},
     {"role": "user", "content": "Count: one two"}, {"role": "assistant", "content": "2"}],
]


def published_template(name: str) -> str:
    """A published chat template from tests/data/chat_templates (stored with a trailing newline)."""
    return (CHAT_TEMPLATES / name).read_text(encoding="utf-8").rstrip("\n")


def read(tmp_path: Path, rows: list, **spec) -> list:
    """``rows`` written as JSON lines and read back through a dataset entry (Conversations and Skips)."""
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return list(iter_conversations(DatasetSpec(name="t", type="jsonl", dataset_name=str(path), **spec), tmp_path))


def with_template(toy_tokenizer_dir: Path, tmp_path: Path, template: str) -> Path:
    """The toy tokenizer with another chat_template, saved as a tokenizer directory."""
    out = tmp_path / "tok"
    shutil.copytree(toy_tokenizer_dir, out)
    tok = load_tokenizer(out)
    tok.chat_template = template
    tok.save_pretrained(out)
    return out


def prepare_args(tmp_path: Path, data: Path, out: Path, tokenizer: Path, template: str = "tokenizer",
                 name: str = "glaive", kind: str = "json", **dataset) -> list[str]:
    """02_prepare_sft_corpus's arguments for one dataset entry ``name`` (of type ``kind``) reading ``data``."""
    config = {"name": "tools", "template": template,
              "output_params": {"sequence_length": 16384, "shard_size": 500, "train_ratio": 0.9},
              "datasets": [{"name": name, "type": kind, "dataset_name": str(data), **dataset}], "seed": 1}
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return ["--config", str(path), "--output_dir", str(out), "--tokenizer_path", str(tokenizer), "--num_proc", "1"]
