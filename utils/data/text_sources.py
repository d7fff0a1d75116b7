"""Raw-text sources for tokenizer training and pre-training: files, globs, JSONL fields, HF datasets.

Each source yields documents (strings) one at a time, so memory stays flat however
large the corpus is. A source is also cut into ``Partition``s that a worker process (or a Ray task) reads on its
own: runs of whole files, byte ranges of a JSON-lines file (a line belongs to the range its first byte is in), or
the whole source where it cannot be cut (a hub dataset, a .json array, a .gz file, a ``max_documents`` cap). The
documents of a source's partitions, in order, are its documents: ``iter_documents`` reads them the same way.
"""
from __future__ import annotations

import glob
import gzip
import itertools
import json
import os
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


def _text_file(path: Path) -> Iterator[str]:
    text = path.read_text(encoding="utf-8", errors="replace")
    if text.strip():
        yield text


def _row_text(src: TextSource, row: Any) -> str:
    return "\n".join(t for f in src.fields for t in field_texts(row, f))


def _json_lines(src: TextSource, handle, end: float = float("inf")) -> Iterator[str]:
    """Documents of the lines starting before byte ``end`` of a binary ``handle`` (at a line start)."""
    while handle.tell() < end:
        raw = handle.readline()
        if not raw:
            return
        text = _row_text(src, _parse_line(raw.decode("utf-8", errors="replace")))
        if text:
            yield text


def _jsonl_file(src: TextSource, path: Path) -> Iterator[str]:
    if path.suffix == ".json":
        with open(path, encoding="utf-8", errors="replace") as handle:
            rows: Any = json.load(handle)
        for row in rows if isinstance(rows, list) else [rows]:
            text = _row_text(src, row)
            if text:
                yield text
        return
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as handle:
        yield from _json_lines(src, handle)


def _jsonl_range(src: TextSource, path: Path, start: int, end: int) -> Iterator[str]:
    """The documents of the lines of ``path`` that start in bytes [start, end)."""
    with open(path, "rb") as handle:
        if start:
            handle.seek(start - 1)
            handle.readline()  # the line holding byte start-1 belongs to the range before
        yield from _json_lines(src, handle, end)


def _parse_line(line: str) -> Any:
    try:
        return json.loads(line)
    except json.JSONDecodeError:
        return None  # a broken line carries no text; raw-text sources are best effort


def _iter_huggingface(src: TextSource) -> Iterator[str]:
    import datasets

    try:
        rows = datasets.load_dataset(src.dataset_name, src.dataset_config, split=src.split,
                                     data_files=src.data_files, streaming=True)
    except Exception as err:  # datasets raises many types; all mean "cannot load this"
        raise UserError(f"source '{src.name}': cannot load dataset '{src.dataset_name}': "
                        f"{str(err).splitlines()[0]}") from None
    for row in rows:
        text = _row_text(src, row)
        if text:
            yield text


def iter_documents(src: TextSource) -> Iterator[str]:
    """Documents of one source, in a stable order, at most ``max_documents``."""
    if src.type == "huggingface":
        docs = _iter_huggingface(src)
    elif src.type == "text_files":
        docs = (doc for path in expand_paths(src.paths, TEXT_SUFFIXES, src.name) for doc in _text_file(path))
    else:
        docs = (doc for path in expand_paths(src.paths, JSONL_SUFFIXES, src.name) for doc in _jsonl_file(src, path))
    return itertools.islice(docs, src.max_documents)


@dataclass(frozen=True)
class Partition:
    """A piece of source ``source`` (its index) that one task reads on its own."""

    index: int
    """Its place among all partitions of all sources: the order of the output."""
    source: int
    kind: str
    """files (whole files, one document each or JSON lines), lines (a byte range of one JSON-lines file),
    whole (the source read as one, by ``iter_documents``)."""
    paths: tuple[str, ...] = ()
    start: int = 0
    end: int = 0


def partitions(sources: list[TextSource], target_bytes: int) -> list[Partition]:
    """Every source cut into partitions of about ``target_bytes`` of input, in order (paths made absolute, so a
    task elsewhere reads the same files)."""
    pieces: list[tuple[int, str, tuple[str, ...], int, int]] = []
    for i, src in enumerate(sources):
        if src.type == "huggingface" or src.max_documents is not None:
            pieces.append((i, "whole", (), 0, 0))
            continue
        suffixes = TEXT_SUFFIXES if src.type == "text_files" else JSONL_SUFFIXES
        group: list[str] = []
        size = 0
        for path in expand_paths(src.paths, suffixes, src.name):
            length = path.stat().st_size
            if src.type == "jsonl" and path.suffix == ".jsonl" and length > target_bytes:
                if group:
                    pieces.append((i, "files", tuple(group), 0, 0))
                    group, size = [], 0
                pieces += [(i, "lines", (str(path.resolve()),), lo, min(lo + target_bytes, length))
                           for lo in range(0, length, target_bytes)]
                continue
            group.append(str(path.resolve()))
            size += length
            if size >= target_bytes:
                pieces.append((i, "files", tuple(group), 0, 0))
                group, size = [], 0
        if group:
            pieces.append((i, "files", tuple(group), 0, 0))
    return [Partition(k, *piece) for k, piece in enumerate(pieces)]


def read_partition(src: TextSource, part: Partition) -> Iterator[str]:
    """The documents of one partition of ``src``, in order."""
    if part.kind == "whole":
        yield from iter_documents(src)
    elif part.kind == "lines":
        yield from _jsonl_range(src, Path(part.paths[0]), part.start, part.end)
    else:
        for name in part.paths:
            path = Path(name)
            yield from _text_file(path) if src.type == "text_files" else _jsonl_file(src, path)


def input_bytes(part: Partition) -> int:
    """The input size of a partition (0 for a whole source: unknown before it is read)."""
    if part.kind == "lines":
        return part.end - part.start
    return sum(os.path.getsize(p) for p in part.paths)
