"""Where SFT rows come from: files, globs, directories or the Hugging Face hub, each row with its origin.

A dataset entry (``datasets[i]`` in an SFT dataset config) becomes a ``DatasetSpec``. ``iter_rows`` turns
it into a stream of ``Row`` (a dict plus exactly where it came from) and ``BadRow`` (a line that could not
be read as a row: invalid JSON, invalid UTF-8, NUL bytes). Turning rows into conversations is
``utils.data.conversations``; this module only reads.

Memory stays flat as inputs grow: JSONL and CSV are read line by line, parquet by record batch, the hub
with ``streaming=True``. A top-level JSON array is parsed whole, because the json module cannot stream.

Origins name the row so a user can open it: ``data/a.jsonl:17`` (1-based line), ``data/a.json[42]``
(0-based array index), ``data/a.parquet[42]`` (0-based row), ``data/a.csv:17`` (line the record starts
on), ``hub:tatsu-lab/alpaca[train]#42``, ``chats/2025-01-15.md``.
"""
from __future__ import annotations

import csv
import glob
import gzip
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from utils.common.errors import UserError, one_line
from utils.data.dataset_entry import DatasetSpec

SUFFIXES = {"json": (".json", ".json.gz"), "jsonl": (".jsonl", ".jsonl.gz"),
            "parquet": (".parquet",), "csv": (".csv",), "text_files": (".txt", ".md")}
PARQUET_BATCH_ROWS = 1024
# datasets' packaged builders read data_files from disk, so those can be checked before loading.
LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow")


@dataclass(frozen=True)
class Row:
    """One record read from a source: its fields and where it came from."""

    origin: str
    data: Any


@dataclass(frozen=True)
class BadRow:
    """A line or record that could not be read; becomes a Skip upstream."""

    origin: str
    reason: str
    detail: str


class RowProblem(Exception):
    """Raised inside layouts; turned into a Skip for the row at hand."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def iter_rows(spec: DatasetSpec, base_dir: Path) -> Iterator[Row | BadRow]:
    """Every row of the entry in file order; markdown files are rows ``{"text": <file text>}``."""
    if spec.type == "huggingface":
        yield from read_hub(spec, base_dir)
        return
    reader = {"json": read_json_array, "jsonl": read_jsonl, "parquet": read_parquet,
              "csv": read_csv, "markdown_transcripts": read_text_file, "text_files": read_text_file}[spec.type]
    for path in resolve_files(spec, base_dir):
        yield from reader(path, display(path, base_dir))


def resolve_files(spec: DatasetSpec, base_dir: Path) -> list[Path]:
    """The files an entry names, sorted; a name that matches nothing is a UserError."""
    where = f"dataset '{spec.name}'"
    if spec.type == "markdown_transcripts":
        files = []
        for d in spec.directories:
            folder = base_dir / d
            if not folder.is_dir():
                raise UserError(f"{where}: directories: '{d}' is not a directory (relative to {base_dir})")
            files += sorted(p for p in folder.glob(spec.file_glob) if p.is_file())
        if not files:
            raise UserError(f"{where}: no file matches file_glob '{spec.file_glob}' in {spec.directories}")
        return files
    target = base_dir / spec.dataset_name
    if target.is_dir():
        files = sorted(p for p in target.rglob("*") if p.is_file() and p.name.endswith(SUFFIXES[spec.type]))
    elif glob.has_magic(spec.dataset_name):
        files = sorted(Path(p) for p in glob.glob(str(target), recursive=True) if Path(p).is_file())
    elif target.is_file():
        files = [target]
    else:
        raise UserError(f"{where}: dataset_name: '{spec.dataset_name}' not found (relative to {base_dir}); "
                        "give an existing file, glob or directory")
    if not files:
        raise UserError(f"{where}: dataset_name: '{spec.dataset_name}' matches no "
                        f"{'/'.join(SUFFIXES[spec.type])} file")
    return files


def display(path: Path, base_dir: Path) -> str:
    """The path as origins show it: relative to base_dir when inside it."""
    try:
        return str(path.resolve().relative_to(base_dir.resolve()))
    except ValueError:
        return str(path)


def _open_binary(path: Path) -> BinaryIO:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def read_jsonl(path: Path, shown: str) -> Iterator[Row | BadRow]:
    """One JSON object per line; each bad line is a BadRow, blank lines are not rows."""
    try:
        with _open_binary(path) as f:
            for number, raw in enumerate(f, start=1):
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    raw = raw[3:]
                raw = raw.rstrip(b"\r\n")
                if raw.strip():
                    yield _parse_line(raw, f"{shown}:{number}")
    except (OSError, EOFError) as err:  # truncated or corrupt .gz: the rest of the file is unreadable
        raise UserError(f"{shown}: cannot read ({err}); re-download or re-compress the file") from None


def _parse_line(raw: bytes, origin: str) -> Row | BadRow:
    nul = raw.find(b"\x00")
    if nul >= 0:
        return BadRow(origin, "nul_byte", f"NUL byte at byte {nul + 1} of the line")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        return BadRow(origin, "invalid_utf8", f"{err.reason} at byte {err.start}")
    try:
        return Row(origin, json.loads(text))
    except json.JSONDecodeError as err:
        return BadRow(origin, "invalid_json", f"{err.msg} at column {err.colno}")
    except (ValueError, RecursionError) as err:  # a 5000-digit number, lists nested 10^5 deep
        return BadRow(origin, "invalid_json", json_limit(err))


def json_limit(err: Exception) -> str:
    """What json.loads hit beyond syntax errors, in a few words."""
    if isinstance(err, RecursionError):
        return "nested too deeply"
    return one_line(err)[:200]


def read_json_array(path: Path, shown: str) -> Iterator[Row | BadRow]:
    """A top-level JSON array of rows, parsed whole; origins are ``file[index]``."""
    try:
        with _open_binary(path) as f:
            text = f.read().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise UserError(f"{shown}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except (OSError, EOFError) as err:
        raise UserError(f"{shown}: cannot read ({err})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        hint = "; it looks like JSON Lines: set type to jsonl" if err.msg == "Extra data" else ""
        raise UserError(f"{shown}:{err.lineno}:{err.colno}: invalid JSON: {err.msg}{hint}") from None
    except (ValueError, RecursionError) as err:
        raise UserError(f"{shown}: cannot parse JSON ({json_limit(err)})") from None
    del text
    if not isinstance(data, list):
        raise UserError(f"{shown}: expected a top-level JSON array of rows, got {type(data).__name__}")
    for index, item in enumerate(data):
        yield Row(f"{shown}[{index}]", item)


def read_csv(path: Path, shown: str) -> Iterator[Row | BadRow]:
    """CSV with a header row; every cell is a string. Origins are the line a record starts on."""
    csv.field_size_limit(2**31 - 1)  # long responses exceed the 128 KiB default
    # surrogateescape keeps reading past invalid UTF-8 so that only the affected record is skipped.
    try:
        f = open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")
    except OSError as err:
        raise UserError(f"{shown}: cannot read ({err.strerror})") from None
    with f:
        reader = csv.DictReader(f)
        start = 2
        try:
            for record in reader:
                yield _check_csv_record(record, f"{shown}:{start}")
                start = reader.line_num + 1
        except csv.Error as err:
            raise UserError(f"{shown}:{reader.line_num}: unreadable CSV ({err})") from None


def _check_csv_record(record: dict, origin: str) -> Row | BadRow:
    cells = [v for v in record.values() if isinstance(v, str)]
    if any("\x00" in v for v in cells):
        return BadRow(origin, "nul_byte", "NUL byte in a cell")
    if any(any("\udc80" <= ch <= "\udcff" for ch in v) for v in cells):
        return BadRow(origin, "invalid_utf8", "a cell is not valid UTF-8")
    if None in record:
        return BadRow(origin, "wrong_type", f"{len(record[None])} more cells than header columns")
    return Row(origin, record)


def read_parquet(path: Path, shown: str) -> Iterator[Row | BadRow]:
    """Parquet read one record batch at a time; origins are ``file[row]``."""
    import pyarrow.parquet as pq

    try:
        parquet = pq.ParquetFile(path)
        index = 0
        for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS):
            for record in batch.to_pylist():
                yield Row(f"{shown}[{index}]", record)
                index += 1
    except (OSError, ValueError) as err:  # pyarrow raises ArrowInvalid (a ValueError) for corrupt files
        raise UserError(f"{shown}: cannot read parquet ({err})") from None


def read_text_file(path: Path, shown: str) -> Iterator[Row | BadRow]:
    """A whole text file as one row ``{"text": ...}`` (markdown transcripts, raw text); BOM dropped."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{shown}: cannot read ({err.strerror})") from None
    try:
        yield Row(shown, {"text": data.decode("utf-8-sig")})
    except UnicodeDecodeError as err:
        yield BadRow(shown, "invalid_utf8", f"{err.reason} at byte {err.start}")


def read_hub(spec: DatasetSpec, base_dir: Path) -> Iterator[Row | BadRow]:
    """``datasets.load_dataset(..., streaming=True)``: a hub name, or a builder ("json") with data_files."""
    import datasets

    where = f"dataset '{spec.name}'"
    tag = f"hub:{spec.dataset_name}[{spec.split}]"
    data_files = _resolve_data_files(spec.data_files, base_dir)
    if spec.dataset_name in LOCAL_BUILDERS:
        _check_local_files(data_files, where)
    try:
        stream = datasets.load_dataset(spec.dataset_name, spec.dataset_config, split=spec.split,
                                       data_files=data_files, streaming=True)
    except Exception as err:  # hub, network and builder failures have no common base class
        if spec.dataset_name in LOCAL_BUILDERS:
            raise UserError(f"{where}: cannot load '{spec.dataset_name}' split '{spec.split}' "
                            f"({one_line(err)}); check the name, split and data_files") from None
        raise UserError(f"{where}: cannot load '{spec.dataset_name}' split '{spec.split}' from the Hugging Face hub "
                        f"({one_line(err)[:200]}); check the name and the network, or read a local copy: set "
                        f"dataset_name to the file and type to json/jsonl/parquet/csv, or pass --local_copy "
                        f"{spec.dataset_name}=FILE to 02_prepare_sft_corpus.py") from None
    index = 0
    try:
        for record in stream:
            yield Row(f"{tag}#{index}", record)
            index += 1
    except Exception as err:  # a streaming builder cannot skip a bad record: stop with where it broke
        raise UserError(f"{where}: reading {tag}#{index} failed ({one_line(err)})") from None


def _check_local_files(data_files: Any, where: str) -> None:
    if not data_files:
        raise UserError(f"{where}: data_files: missing; the local builders read only the files named there")
    names = data_files if isinstance(data_files, list) else (
        [n for v in data_files.values() for n in (v if isinstance(v, list) else [v])]
        if isinstance(data_files, dict) else [data_files])
    for name in names:
        if "://" not in name and not glob.glob(name, recursive=True):
            raise UserError(f"{where}: data_files: '{name}' matches no file")


def _resolve_data_files(data_files: Any, base_dir: Path) -> Any:
    """Relative local data_files resolve against base_dir, like dataset_name does."""
    if isinstance(data_files, str):
        local = base_dir / data_files
        return str(local) if "://" not in data_files and (local.exists() or glob.has_magic(data_files)) \
            else data_files
    if isinstance(data_files, list):
        return [_resolve_data_files(item, base_dir) for item in data_files]
    if isinstance(data_files, dict):
        return {split: _resolve_data_files(item, base_dir) for split, item in data_files.items()}
    return data_files
