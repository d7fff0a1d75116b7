"""Raw-text sources for tokenizer training and pre-training: files, globs, JSONL fields, HF datasets.

Each source yields documents (strings) one at a time, so memory stays flat however
large the corpus is.
"""
from __future__ import annotations

import glob
import gzip
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from utils.common.config_schema import setting
from utils.common.errors import UserError

TEXT_SUFFIXES = (".txt", ".md")
SOURCE_TYPES = ("text_files", "jsonl", "huggingface")
"""The readers of a text source (``_READERS``)."""
JSONL_SUFFIXES = (".jsonl", ".jsonl.gz", ".json")


@dataclass
class TextSource:
    type: str = setting(enum=SOURCE_TYPES)
    """text_files: .txt/.md files or globs, one document per file; jsonl: JSON lines with text fields; huggingface:
    datasets.load_dataset by hub name or local path."""
    name: str = ""
    """Label used in logs and statistics (defaults to the first path or dataset name)."""
    paths: list[str] = field(default_factory=list)
    """Files, directories (searched recursively for .txt/.md, or .jsonl/.jsonl.gz) or glob patterns; relative to the
    working directory."""
    fields: list[str] = field(default_factory=lambda: ["text"])
    """Dotted field paths holding text; a list on the path is walked, e.g. messages.content."""
    dataset_name: str = ""
    """huggingface: hub name (e.g. wikitext) or local path given to datasets.load_dataset."""
    dataset_config: str | None = None
    """huggingface: the dataset's configuration name (e.g. wikitext-2-raw-v1)."""
    data_files: Any = setting(None, type=["string", "array", "null"])
    """huggingface: data_files passed to datasets.load_dataset."""
    split: str = "train"
    """huggingface: split to read."""
    weight: float = setting(1.0, minimum=0)
    """Relative share of this source in the mix (tokenizer training)."""
    max_documents: int | None = setting(None, minimum=1)
    """Read at most this many documents."""

    def __post_init__(self) -> None:
        if self.type in ("text_files", "jsonl") and not self.paths:
            raise ValueError(f"source of type {self.type} needs 'paths'")
        if self.type == "huggingface" and not self.dataset_name:
            raise ValueError("source of type huggingface needs 'dataset_name'")
        self.name = self.name or (self.paths[0] if self.paths else self.dataset_name)


def expand_paths(patterns: list[str], suffixes: tuple[str, ...], source: str) -> list[Path]:
    """Files named by paths, directories (recursive) and globs, sorted for a stable order."""
    files: list[Path] = []
    for pattern in patterns:
        path = Path(pattern)
        if path.is_dir():
            files += [p for p in path.rglob("*") if p.is_file() and p.name.endswith(suffixes)]
        elif path.is_file():
            files.append(path)
        else:
            matches = [Path(p) for p in glob.glob(pattern, recursive=True) if Path(p).is_file()]
            if not matches:
                raise UserError(f"source '{source}': paths: nothing found at '{pattern}'")
            files += matches
    if not files:
        raise UserError(f"source '{source}': paths: no {'/'.join(suffixes)} files in {patterns}")
    return sorted(set(files))


def field_texts(row: Any, dotted: str) -> Iterator[str]:
    """Strings at a dotted path; lists on the way are walked (``messages.content``)."""
    if isinstance(row, list):
        for item in row:
            yield from field_texts(item, dotted)
        return
    if not dotted:
        if isinstance(row, str) and row.strip():
            yield row
        return
    head, _, rest = dotted.partition(".")
    if isinstance(row, dict) and head in row:
        yield from field_texts(row[head], rest)


def _iter_text_files(src: TextSource) -> Iterator[str]:
    for path in expand_paths(src.paths, TEXT_SUFFIXES, src.name):
        text = path.read_text(encoding="utf-8", errors="replace")
        if text.strip():
            yield text


def _iter_jsonl(src: TextSource) -> Iterator[str]:
    for path in expand_paths(src.paths, JSONL_SUFFIXES, src.name):
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8", errors="replace") as handle:
            if path.suffix == ".json":
                rows: Any = json.load(handle)
                rows = rows if isinstance(rows, list) else [rows]
            else:
                rows = (_parse_line(line) for line in handle)
            for row in rows:
                text = "\n".join(t for f in src.fields for t in field_texts(row, f))
                if text:
                    yield text


def _parse_line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None  # a broken line carries no text; raw-text sources are best effort


def _iter_huggingface(src: TextSource) -> Iterator[str]:
    # datasets costs seconds to import; deferred so callers that skip this stay fast
    import datasets

    try:
        rows = datasets.load_dataset(src.dataset_name, src.dataset_config, split=src.split,
                                     data_files=src.data_files, streaming=True)
    except Exception as err:  # datasets raises many types; all mean "cannot load this"
        raise UserError(f"source '{src.name}': cannot load dataset '{src.dataset_name}': "
                        f"{str(err).splitlines()[0]}") from None
    for row in rows:
        text = "\n".join(t for f in src.fields for t in field_texts(row, f))
        if text:
            yield text


_READERS = {"text_files": _iter_text_files, "jsonl": _iter_jsonl, "huggingface": _iter_huggingface}


def iter_documents(src: TextSource) -> Iterator[str]:
    """Documents of one source, in a stable order, at most ``max_documents``."""
    for count, doc in enumerate(_READERS[src.type](src)):
        if src.max_documents is not None and count >= src.max_documents:
            return
        yield doc
