"""What the user made last: ``LAST`` pointers that the make targets write after a stage succeeds and read for their
defaults, so `make sft-train-small` trains on the corpus `make prepare-sft-corpus` just prepared and `make sft-eval`
evaluates the model the last training target wrote.

A pointer is a one-line text file ``LAST`` in the folder of the things it points among (``data/sft_processed/LAST``
holds ``alpaca_chatml``); it names a sibling, never a path elsewhere.
"""
from __future__ import annotations

import json
from pathlib import Path

from utils.common.publish import write_text_atomic

POINTER = "LAST"
SFT_CORPORA = Path("data/sft_processed")
SFT_RUNS = Path("checkpoints/sft_industrial")
TOKENIZERS = Path("checkpoints/tokenizer")


def write_last(folder: Path, name: str) -> None:
    """Record ``folder/name`` as the last one made."""
    write_text_atomic(Path(folder) / POINTER, Path(name).name + "\n")


def read_last(folder: Path) -> Path | None:
    """``folder/<name in LAST>`` when the pointer exists and what it names is still there; else None."""
    try:
        name = (Path(folder) / POINTER).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    target = Path(folder) / name
    return target if name and "/" not in name and target.exists() else None


def corpus_tokenizer(data_dir: Path) -> str | None:
    """The tokenizer a prepared corpus was made with (its manifest's tokenizer_path), when it is still there."""
    try:
        manifest = json.loads((Path(data_dir) / "manifest.json").read_text(encoding="utf-8"))
        path = manifest["tokenizer_metadata"]["tokenizer_path"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return str(path) if isinstance(path, str) and Path(path).exists() else None


def trained_with(model_dir: Path) -> dict:
    """The training summary of a final/ (model_path, data_dirs, ...), {} when it has none."""
    try:
        summary = json.loads((Path(model_dir) / "training_summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}
