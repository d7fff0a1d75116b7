"""The prepared SFT corpus on disk: sharded JSONL, its manifest, and the checks readers run on it.

Layout of a prepared directory (the trainer and evaluator depend on these names)::

    train_00000.jsonl ...   one example per line, compact JSON:
                            {"input_ids": [...], "labels": [...], "source": "<dataset name>"}
    val_00000.jsonl ...     same, validation split (no files, and num_shards 0, when it is empty)
    manifest.json           format_version, tokenizer_metadata, template, sequence_length, splits
                            (per shard: file, sha256, conversations, tokens, supervised_tokens),
                            sources, the resolved config, library versions, created_at
    DATA_CARD.md, length_histogram.png, training_state.json

``labels`` has the length of ``input_ids``: -100 where no loss is taken, else the token id itself
(not shifted; the trainer shifts). ``shard_size`` is the number of examples per shard.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from utils.common.errors import UserError
from utils.common.hashing import sha256_file
from utils.common.locks import recover_published

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
SPLITS = ("train", "val")
RERUN = "re-run the prepare stage (make prepare-sft-corpus) to rebuild it"
KINDS = {"sft": ("an SFT corpus (scripts/02_prepare_sft_corpus.py)", RERUN),
         "text": ("a raw-text corpus (scripts/01_prepare_text_corpus.py)",
                  "re-run the text prepare stage (make prepare-text-corpus) to rebuild it")}
"""What a prepared directory holds (manifest ``kind``; an SFT manifest names none): its description and the fix."""


def shard_name(split: str, index: int) -> str:
    return f"{split}_{index:05d}.jsonl"


def example_line(input_ids: list[int], labels: list[int], source: str) -> str:
    """One shard line (without the newline); compact and key-ordered so output is byte-stable."""
    return json.dumps({"input_ids": input_ids, "labels": labels, "source": source},
                      separators=(",", ":"), ensure_ascii=False)


class ShardWriter:
    """Writes one split's examples into numbered shards of ``shard_size`` lines, hashing as it goes."""

    def __init__(self, out_dir: Path, split: str, shard_size: int) -> None:
        self.out_dir, self.split, self.shard_size = Path(out_dir), split, shard_size
        self.shards: list[dict] = []
        self._handle = None
        self._digest = None

    def add(self, line: str, tokens: int, supervised: int) -> None:
        """Append an example given as its ``example_line`` text."""
        if self._handle is None or self.shards[-1]["conversations"] >= self.shard_size:
            self._open_next()
        data = (line + "\n").encode("utf-8")
        self._handle.write(data)
        self._digest.update(data)
        shard = self.shards[-1]
        shard["conversations"] += 1
        shard["tokens"] += tokens
        shard["supervised_tokens"] += supervised

    def _open_next(self) -> None:
        self._finish_current()
        name = shard_name(self.split, len(self.shards))
        self._handle = open(self.out_dir / name, "wb")
        self._digest = hashlib.sha256()
        self.shards.append({"file": name, "sha256": "", "conversations": 0, "tokens": 0, "supervised_tokens": 0})

    def _finish_current(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self.shards[-1]["sha256"] = self._digest.hexdigest()
            self._handle = None

    def close(self) -> dict:
        """The split's manifest entry."""
        self._finish_current()
        return {
            "num_shards": len(self.shards),
            "conversations": sum(s["conversations"] for s in self.shards),
            "total_tokens": sum(s["tokens"] for s in self.shards),
            "supervised_tokens": sum(s["supervised_tokens"] for s in self.shards),
            "shards": self.shards,
        }


# ---------------------------------------------------------------------- reader side
def load_manifest(data_dir: str | Path, kind: str = "sft") -> dict:
    """The manifest of a prepared directory of ``kind``; UserError naming the file when missing, invalid or of
    the other kind."""
    path = Path(data_dir) / MANIFEST
    what, rerun = KINDS[kind]
    recover_published(data_dir)  # a prepare killed while publishing leaves the previous corpus beside it
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found; {data_dir} is not {what} ({rerun})") from None
    except (OSError, ValueError) as err:  # ValueError: invalid UTF-8 or JSON, numbers too long
        raise UserError(f"{path}: unreadable ({str(err)[:200]}); {rerun}") from None
    except RecursionError:
        raise UserError(f"{path}: unreadable (nested too deeply); {rerun}") from None
    if not isinstance(manifest, dict) or manifest.get("format_version") != FORMAT_VERSION:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise UserError(f"{path}: format_version {version!r}, expected {FORMAT_VERSION}; {rerun}")
    found = manifest.get("kind", "sft")
    if found != kind:
        other = KINDS[found][0] if found in KINDS else f"a corpus of kind {found!r}"
        raise UserError(f"{path}: {data_dir} is {other}, not {what}; "
                        + ("train SFT corpora with 03 (or mix them into pre-training with data.supervised)"
                           if found == "sft" else "pass it to scripts/01_pretrain.py --data_dirs"))
    for key in ("tokenizer_metadata", "splits") + (("sequence_length",) if kind == "sft" else ()):
        if key not in manifest:
            raise UserError(f"{path}: field '{key}' missing; {rerun}")
    if not isinstance(manifest["tokenizer_metadata"], dict) or not isinstance(manifest["splits"], dict):
        raise UserError(f"{path}: tokenizer_metadata and splits must be objects; {rerun}")
    for split in SPLITS:
        entry = manifest["splits"].get(split, {})
        shards = entry.get("shards", []) if isinstance(entry, dict) else None
        if not isinstance(shards, list) or not all(_is_shard_entry(s) for s in shards):
            raise UserError(f"{path}: splits.{split}.shards is malformed; {rerun}")
    return manifest


def _is_shard_entry(shard) -> bool:
    """A shard entry names a file inside the directory and its sha256."""
    return (isinstance(shard, dict) and isinstance(shard.get("sha256"), str)
            and isinstance(shard.get("file"), str) and shard["file"] == Path(shard["file"]).name)


def verify_data_dir(data_dir: str | Path, expected_tokenizer_sha: str | None = None, kind: str = "sft") -> dict:
    """Check the tokenizer fingerprint and re-hash every shard; returns the manifest.

    A missing shard or a hash mismatch is a UserError naming the file; a different tokenizer is a
    UserError starting with ``Tokenizer mismatch between datasets!``.
    """
    data_dir = Path(data_dir)
    manifest = load_manifest(data_dir, kind)
    rerun = KINDS[kind][1]
    found = manifest["tokenizer_metadata"].get("tokenizer_sha256")
    if expected_tokenizer_sha is not None and found != expected_tokenizer_sha:
        raise UserError(
            f"Tokenizer mismatch between datasets! {data_dir} was prepared with tokenizer {found} but the "
            f"model's tokenizer is {expected_tokenizer_sha}; re-run the prepare stage with the model's "
            "tokenizer (--tokenizer_path) or train with the tokenizer the data was made with")
    for split in SPLITS:
        for shard in manifest["splits"].get(split, {}).get("shards", []):
            path = data_dir / shard["file"]
            if not path.is_file():
                raise UserError(f"{path}: shard listed in {MANIFEST} is missing; {rerun}")
            if sha256_file(path) != shard["sha256"]:
                raise UserError(f"{path}: sha256 differs from {MANIFEST} (file changed or corrupt); {rerun}")
    return manifest


def parse_example(line: str, where: str) -> tuple[np.ndarray, np.ndarray, str]:
    """One shard line -> (input_ids, labels, source): every reader of the shards parses them here.

    A line that is not the contract (``example_line``: equal-length, non-empty integer lists and a source name) is a
    UserError naming ``where`` (file:line).
    """
    try:
        row = json.loads(line)
        ids = np.asarray(row["input_ids"], dtype=np.int32)
        labels = np.asarray(row["labels"], dtype=np.int32)
        source = row["source"]
        ok = ids.ndim == 1 and ids.shape == labels.shape and len(ids) > 0 and isinstance(source, str)
    except (ValueError, KeyError, TypeError, OverflowError):
        ok = False
    if not ok:
        raise UserError(f"{where}: not a valid example (input_ids and labels: token ids of equal length; "
                        f"source: a name); {RERUN}")
    return ids, labels, source
