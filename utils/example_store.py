"""Token arrays the trainer reads examples from: shards parsed once into numpy, then memory-mapped.

Each store holds flat ``tokens`` and ``labels`` arrays and per-example ``offsets``; a
training step only slices them. SFT stores come from the prepared JSONL shards (cached
as .npy beside them, keyed by the shards' SHA256); pre-training stores cut a token
stream into fixed-length windows.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils.errors import UserError
from utils.packing import IGNORE


@dataclass
class ExampleStore:
    """Examples of one source: example i is tokens[offsets[i]:offsets[i+1]]."""

    name: str
    tokens: np.ndarray      # int32
    labels: np.ndarray      # int32, -100 where unsupervised (not shifted)
    offsets: np.ndarray     # int64, len = num_examples + 1

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def supervised_targets(self) -> np.ndarray:
        """Per example, the positions trained after the shift (labels[1:] != -100)."""
        sup = (self.labels != IGNORE).astype(np.int64)
        sup[self.offsets[:-1]] = 0  # an example's first label is never a target
        return np.add.reduceat(sup, self.offsets[:-1]) if len(self) else np.zeros(0, np.int64)

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.tokens[lo:hi], self.labels[lo:hi]


def _cache_dir(data_dir: Path) -> Path:
    cache = data_dir / ".cache"
    try:
        cache.mkdir(exist_ok=True)
        if os.access(cache, os.W_OK):
            return cache
    except OSError:
        pass
    key = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:16]
    fallback = Path(tempfile.gettempdir()) / f"sft-store-{key}"
    fallback.mkdir(exist_ok=True)
    return fallback


def load_sft_store(data_dir: Path, split: str, manifest: dict) -> ExampleStore:
    """The examples of one split of a prepared data dir (shards must be verified first)."""
    shards = manifest["splits"].get(split, {}).get("shards", [])
    key = hashlib.sha256("".join(s["sha256"] for s in shards).encode()).hexdigest()[:16]
    cache = _cache_dir(data_dir)
    paths = {n: cache / f"{split}-{key}-{n}.npy" for n in ("tokens", "labels", "offsets")}
    if not all(p.exists() for p in paths.values()):
        arrays = _parse_shards(data_dir, shards)
        for name, arr in arrays.items():
            tmp = paths[name].with_name(paths[name].name + f".tmp{os.getpid()}.npy")
            np.save(tmp, arr)
            os.replace(tmp, paths[name])
    loaded = {n: np.load(p, mmap_mode="r") for n, p in paths.items()}
    return ExampleStore(data_dir.name, loaded["tokens"], loaded["labels"], loaded["offsets"])


def _parse_shards(data_dir: Path, shards: list[dict]) -> dict[str, np.ndarray]:
    tokens, labels, offsets = [], [], [0]
    for shard in shards:
        path = data_dir / shard["file"]
        with open(path, encoding="utf-8") as handle:
            for lineno, line in enumerate(handle, 1):
                try:
                    row = json.loads(line)
                    ids = np.asarray(row["input_ids"], dtype=np.int32)
                    lab = np.asarray(row["labels"], dtype=np.int32)
                except (ValueError, KeyError, TypeError) as err:
                    raise UserError(f"{path}:{lineno}: malformed shard line ({err}); "
                                    "re-run the prepare stage") from None
                if ids.shape != lab.shape or ids.ndim != 1 or not len(ids):
                    raise UserError(f"{path}:{lineno}: input_ids and labels differ in length; "
                                    "re-run the prepare stage")
                tokens.append(ids)
                labels.append(lab)
                offsets.append(offsets[-1] + len(ids))
    empty = np.zeros(0, np.int32)
    return {"tokens": np.concatenate(tokens) if tokens else empty,
            "labels": np.concatenate(labels) if labels else empty,
            "offsets": np.asarray(offsets, dtype=np.int64)}


def window_store(name: str, stream: np.ndarray, window: int) -> ExampleStore:
    """Fixed-length windows over a token stream (pre-training): every token is a label."""
    count = len(stream) // window
    tokens = np.asarray(stream[: count * window], dtype=np.int32)
    offsets = np.arange(count + 1, dtype=np.int64) * window
    return ExampleStore(name, tokens, tokens, offsets)
