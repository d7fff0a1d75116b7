"""The Data tab: prepared SFT corpora (data/sft_processed/*) as their manifest, training_state.json and shards
describe them: counts, drops by reason, the length histogram, the mixture, and examples with the trained
tokens marked (the data card's marked samples, here from the shards themselves)."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from utils.common.errors import UserError
from utils.data.data_card import HISTOGRAM
from utils.data.shards import load_manifest, parse_example
from utils.data.tokenizer import load_tokenizer

IGNORE = -100


def find_corpora(root: Path) -> list[Path]:
    """Every prepared corpus directly under ``root`` (a directory holding manifest.json), by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and (p / "manifest.json").is_file())


def corpus_summary(data_dir: Path) -> dict:
    """Figures of one corpus: name, template, tokenizer, splits, per-source rows, drops, histogram path.

    A missing or damaged manifest is a UserError naming the file (the page shows it as a message)."""
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir)
    state = _json(data_dir / "training_state.json") or {}
    meta = manifest["tokenizer_metadata"]
    splits = [[name, s.get("conversations", 0), s.get("total_tokens", 0), s.get("supervised_tokens", 0),
               s.get("num_shards", 0)] for name, s in manifest["splits"].items()]
    sources = [[name, s.get("read"), s.get("dropped"), s.get("kept_train"), s.get("written_train"),
                s.get("weight"), "-" if s.get("target_ratio") is None else s.get("target_ratio"),
                s.get("achieved_ratio")] for name, s in (manifest.get("sources") or {}).items()]
    drops = [[reason, sum(by.values()), ", ".join(f"{k}: {n}" for k, n in by.items())]
             for reason, by in (state.get("drops") or {}).items()]
    histogram = data_dir / HISTOGRAM
    return {"name": manifest.get("name", data_dir.name), "path": str(data_dir),
            "template": (manifest.get("template") or {}).get("name", ""),
            "train_on": (manifest.get("template") or {}).get("train_on", ""),
            "tokenizer_sha256": meta.get("tokenizer_sha256", ""), "vocab_size": meta.get("vocab_size"),
            "tokenizer_path": meta.get("tokenizer_path", ""), "sequence_length": manifest["sequence_length"],
            "splits": splits, "sources": sources, "drops": drops,
            "histogram": str(histogram) if histogram.is_file() else None}


def summary_markdown(summary: dict) -> str:
    return "\n".join([
        f"### {summary['name']}", "",
        f"- `{summary['path']}`; template `{summary['template']}`, loss on {summary['train_on'].replace('_', ' ')}",
        f"- tokenizer fingerprint `{summary['tokenizer_sha256'][:16]}` (vocab {summary['vocab_size']}), "
        f"sequence length {summary['sequence_length']}"])


SPLIT_HEADERS = ["split", "conversations", "tokens", "supervised tokens", "shards"]
SOURCE_HEADERS = ["source", "read", "dropped", "kept train", "written train", "weight", "target", "achieved"]
DROP_HEADERS = ["reason", "total", "by source"]


def read_example(data_dir: Path, split: str, index: int) -> dict:
    """Example ``index`` of ``split``, read line by line from its shards (nothing else is loaded)."""
    manifest = load_manifest(data_dir)
    for shard in manifest["splits"].get(split, {}).get("shards", []):
        count = shard.get("conversations", 0)
        if index < count:
            path = Path(data_dir) / shard["file"]
            with open(path, encoding="utf-8") as handle:
                line = next(itertools.islice(handle, index, None), None)
            if line is None:
                raise UserError(f"{path}: has fewer lines than the manifest says; re-run the prepare stage")
            ids, labels, source = parse_example(line, f"{path}:{index + 1}")
            return {"input_ids": ids.tolist(), "labels": labels.tolist(), "source": source}
        index -= count
    raise UserError(f"{split} example {index}: out of range")


def num_examples(data_dir: Path, split: str) -> int:
    return int(load_manifest(data_dir)["splits"].get(split, {}).get("conversations", 0))


def highlight(input_ids: list[int], labels: list[int], decode) -> list[tuple[str, str | None]]:
    """(text, "trained" or None) segments: runs of supervised tokens (label != -100) and of context.

    Each segment's text is the difference between the decoded prefixes that end and start it, so spaces that a
    tokenizer attaches to the next token land where they belong."""
    segments: list[tuple[str, str | None]] = []
    done_text, start = "", 0
    for k in range(1, len(input_ids) + 1):
        if k < len(input_ids) and (labels[k] != IGNORE) == (labels[start] != IGNORE):
            continue
        text = decode(input_ids[:k])
        piece = text[len(done_text):] if text.startswith(done_text) else decode(input_ids[start:k])
        segments.append((piece, "trained" if labels[start] != IGNORE else None))
        done_text, start = text, k
    return segments


class ExampleBrowser:
    """Examples of a corpus rendered with its own tokenizer (loaded once per corpus)."""

    def __init__(self) -> None:
        self._tokenizers: dict[str, object] = {}

    def tokenizer(self, path: str):
        if path not in self._tokenizers:
            self._tokenizers[path] = load_tokenizer(path)
        return self._tokenizers[path]

    def render(self, data_dir: Path, split: str, index: int) -> tuple[list[tuple[str, str | None]], str]:
        """(segments, caption) of one example; the tokenizer is the one the manifest names."""
        example = read_example(data_dir, split, index)
        path = load_manifest(data_dir)["tokenizer_metadata"].get("tokenizer_path", "")
        try:
            tok = self.tokenizer(path)
        except Exception as err:  # any loading failure becomes the caption, with ids shown instead
            ids = example["input_ids"]
            return ([(" ".join(map(str, ids)), None)],
                    f"tokenizer {path} did not load ({str(err)[:120]}); token ids shown")
        segments = highlight(example["input_ids"], example["labels"],
                             lambda ids: tok.decode(ids, skip_special_tokens=False))
        trained = sum(1 for x in example["labels"] if x != IGNORE)
        caption = (f"source {example.get('source', '?')}: {len(example['input_ids'])} tokens, {trained} trained "
                   "(highlighted)")
        return segments, caption


def _json(path: Path) -> dict | None:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None
