"""Raw text → token streams for pre-training/CPT: documents separated by EOS, split by a hash of the text.

Tokens are appended to binary files as documents stream in, then memory-mapped, so memory
stays flat however large the corpus is. A cache key (tokenizer fingerprint + sources +
split ratio) lets a re-run reuse the streams.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
from tqdm import tqdm

from utils.common.config_schema import setting
from utils.data.text_sources import TextSource, iter_documents

BATCH_DOCS = 256
TOKEN_DTYPE = np.dtype("<u4")
"""Token files hold uint32 little-endian ids."""


@dataclass(frozen=True)
class SupervisedSource:
    """A prepared SFT corpus mixed into pre-training: its examples keep their loss masks."""

    data_dir: str = setting(minLength=1)
    """A prepared corpus directory (with manifest.json)."""
    weight: float = setting(1.0, exclusiveMinimum=0)
    """Sampling weight against text_weight and the other corpora."""


@dataclass(frozen=True)
class PretrainData:
    sources: list[TextSource] = setting(minItems=1)
    """Text sources (files, globs, JSONL fields, HF datasets)."""
    sequence_length: int = setting(256, minimum=16)
    """Tokens per training sequence."""
    val_ratio: float = setting(0.02, minimum=0, exclusiveMaximum=1)
    """Share of documents held out for validation (chosen by a hash of the text)."""
    text_weight: float = setting(1.0, exclusiveMinimum=0)
    """Sampling weight of the raw-text windows against the supervised corpora (shares of the examples drawn)."""
    supervised: list[SupervisedSource] = field(default_factory=list)
    """Prepared SFT corpora (scripts/02_prepare_sft_corpus.py, same tokenizer) trained alongside the text with their
    loss masks: instruction data in pre-training, so the base model learns skills such as copying from its
    context that raw text alone teaches slowly."""


@dataclass
class StreamStats:
    documents: dict = field(default_factory=lambda: {"train": 0, "val": 0})
    tokens: dict = field(default_factory=lambda: {"train": 0, "val": 0})
    key: str = ""


def is_val(text: str, ratio: float) -> bool:
    """Stable split: a document's side depends on its own text only."""
    digest = hashlib.sha256(text.encode("utf-8", "replace")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < ratio


def build_streams(data: PretrainData, tokenizer, fingerprint: str, cache_dir: Path,
                  show_progress: bool = True) -> tuple[dict[str, np.ndarray], StreamStats]:
    """Token streams {"train", "val"} (uint32 memmaps), built once per cache key."""
    key_src = json.dumps([fingerprint, [asdict(s) for s in data.sources], data.val_ratio], sort_keys=True)
    key = hashlib.sha256(key_src.encode()).hexdigest()[:16]
    cache_dir.mkdir(parents=True, exist_ok=True)
    paths = {split: cache_dir / f"{split}-{key}.bin" for split in ("train", "val")}
    stats_path = cache_dir / f"stats-{key}.json"
    if not stats_path.exists():
        stats = _write_streams(data, tokenizer, paths, show_progress)
        stats.key = key
        stats_path.write_text(json.dumps(asdict(stats)))
    stats = StreamStats(**json.loads(stats_path.read_text()))
    streams = {s: np.memmap(p, dtype=np.uint32, mode="r") if p.stat().st_size else np.zeros(0, np.uint32)
               for s, p in paths.items()}
    return streams, stats


def _write_streams(data: PretrainData, tokenizer, paths: dict[str, Path], show_progress: bool) -> StreamStats:
    stats = StreamStats()
    tmp = {s: p.with_name(p.name + f".tmp{os.getpid()}") for s, p in paths.items()}
    handles = {s: open(t, "wb") for s, t in tmp.items()}
    try:
        bar = tqdm(desc="tokenizing corpus", unit="doc", disable=not show_progress)
        for src in data.sources:
            batch: list[str] = []
            for doc in iter_documents(src):
                batch.append(doc)
                if len(batch) == BATCH_DOCS:
                    _write_batch(batch, tokenizer, data.val_ratio, handles, stats)
                    bar.update(len(batch))
                    batch = []
            _write_batch(batch, tokenizer, data.val_ratio, handles, stats)
            bar.update(len(batch))
        bar.close()
    finally:
        for handle in handles.values():
            handle.close()
    for split in paths:
        os.replace(tmp[split], paths[split])
    return stats


def _write_batch(docs: list[str], tokenizer, val_ratio: float, handles, stats: StreamStats) -> None:
    for split, arr in encode_documents(docs, tokenizer, val_ratio):
        handles[split].write(arr.tobytes())
        stats.documents[split] += 1
        stats.tokens[split] += len(arr)


def encode_documents(docs: list[str], tokenizer, val_ratio: float) -> Iterator[tuple[str, np.ndarray]]:
    """Each document's split and its tokens followed by EOS (uint32, little-endian): the one encoding of raw text
    for pre-training, in the launch and in the prepare stage (utils/data/text_corpus.py) alike."""
    if not docs:
        return
    encoded = tokenizer(docs, add_special_tokens=False, split_special_tokens=True)["input_ids"]
    for text, ids in zip(docs, encoded):
        split = "val" if is_val(text, val_ratio) else "train"
        yield split, np.asarray(ids + [tokenizer.eos_token_id], dtype=TOKEN_DTYPE)
