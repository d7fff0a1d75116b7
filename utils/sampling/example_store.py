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

from utils.common.errors import UserError
from utils.common.labels import IGNORE
from utils.data.shards import parse_example

TARGET_BLOCK = 65536
"""Examples per block when counting supervised targets."""


@dataclass
class ExampleStore:
    """Examples of one source: example i is tokens[offsets[i]:offsets[i+1]]."""

    name: str
    tokens: np.ndarray      # int32
    labels: np.ndarray      # int32, -100 where unsupervised (not shifted)
    offsets: np.ndarray     # int64, len = num_examples + 1
    source_ids: np.ndarray | None = None   # int32 per example: index into source_names
    source_names: tuple[str, ...] = ()
    targets: np.ndarray | None = None      # int32 per example: supervised_targets, when counted already

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    @property
    def supervised_targets(self) -> np.ndarray:
        """Per example, the positions trained after the shift (labels[1:] != -100).

        SFT stores count them while their cache is written; otherwise they are counted a block of
        examples at a time, so that memory stays flat however large the store is.
        """
        if self.targets is not None:
            return np.asarray(self.targets, dtype=np.int64)
        out = np.zeros(len(self), np.int64)
        for first in range(0, len(self), TARGET_BLOCK):
            last = min(first + TARGET_BLOCK, len(self))
            lo, hi = int(self.offsets[first]), int(self.offsets[last])
            starts = np.asarray(self.offsets[first:last]) - lo
            sup = np.asarray(self.labels[lo:hi]) != IGNORE
            sup[starts] = False  # an example's first label is never a target
            out[first:last] = np.add.reduceat(sup.astype(np.int32), starts) if hi > lo else 0
        return out

    def get(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self.offsets[i], self.offsets[i + 1]
        return self.tokens[lo:hi], self.labels[lo:hi]

    def subset(self, indices: np.ndarray, name: str) -> "ExampleStore":
        """A copy holding only ``indices`` (used for small splits such as validation)."""
        parts = [self.get(int(i)) for i in indices]
        lengths = [len(p[0]) for p in parts]
        cat = lambda arrays: np.concatenate(arrays) if arrays else np.zeros(0, np.int32)  # noqa: E731
        return ExampleStore(name, cat([p[0] for p in parts]), cat([p[1] for p in parts]),
                            np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64))

    def by_source(self) -> list["ExampleStore"]:
        """One store per dataset source named in the shards (``<dir>/<source>``)."""
        if self.source_ids is None or len(self.source_names) <= 1:
            return [self]
        return [self.subset(np.flatnonzero(np.asarray(self.source_ids) == k), f"{self.name}/{name}")
                for k, name in enumerate(self.source_names)]


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
    paths = {n: cache / f"{split}-{key}-{n}.npy" for n in ("tokens", "labels", "offsets", "sources", "targets")}
    names_path = cache / f"{split}-{key}-source_names.json"
    if not all(p.exists() for p in paths.values()) or not names_path.exists():
        names = _write_cache(data_dir, shards, paths)
        tmp = names_path.with_name(names_path.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(names))
        os.replace(tmp, names_path)  # like the arrays: a crash never leaves a half-written cache file
    loaded = {n: np.load(p, mmap_mode="r") for n, p in paths.items()}
    return ExampleStore(data_dir.name, loaded["tokens"], loaded["labels"], loaded["offsets"],
                        loaded["sources"], tuple(json.loads(names_path.read_text())), loaded["targets"])


class _NpyStream:
    """A 1-D .npy file written front to back; its header (which holds the length) is written last."""

    HEADER = 128  # bytes reserved for the magic string and the header (numpy pads to 64-byte multiples)

    def __init__(self, path: Path, dtype) -> None:
        self.path, self.dtype = path, np.dtype(dtype)
        self.tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        self.handle = open(self.tmp, "wb", buffering=1 << 20)
        self.handle.write(b" " * self.HEADER)
        self.written = 0

    def write(self, values: np.ndarray) -> None:
        self.handle.write(np.asarray(values, dtype=self.dtype).tobytes())
        self.written += len(values)

    def close(self) -> None:
        header = repr({"descr": np.lib.format.dtype_to_descr(self.dtype), "fortran_order": False,
                       "shape": (self.written,)}).encode("latin1")
        preamble = b"\x93NUMPY\x01\x00"
        size = self.HEADER - len(preamble) - 2
        self.handle.seek(0)
        self.handle.write(preamble + size.to_bytes(2, "little") + header.ljust(size - 1) + b"\n")
        self.handle.close()
        os.replace(self.tmp, self.path)  # a crash never leaves a half-written cache file


def _write_cache(data_dir: Path, shards: list[dict], paths: dict[str, Path]) -> list[str]:
    """Parse the shards once into the .npy cache, streaming: memory does not grow with the corpus."""
    streams = {name: _NpyStream(paths[name], dtype) for name, dtype in
               (("tokens", np.int32), ("labels", np.int32), ("offsets", np.int64), ("sources", np.int32),
                ("targets", np.int32))}
    names: dict[str, int] = {}
    end = 0
    streams["offsets"].write(np.zeros(1, np.int64))
    try:
        for shard in shards:
            path = data_dir / shard["file"]
            ends, sources, targets = [], [], []  # per shard: memory bounded by shard_size, not the corpus
            with open(path, encoding="utf-8") as handle:
                for lineno, line in enumerate(handle, 1):
                    ids, lab, source = parse_example(line, f"{path}:{lineno}")
                    end += len(ids)
                    streams["tokens"].write(ids)
                    streams["labels"].write(lab)
                    ends.append(end)
                    sources.append(names.setdefault(source, len(names)))
                    targets.append(int(np.count_nonzero(lab[1:] != IGNORE)))
            streams["offsets"].write(np.asarray(ends, np.int64))
            streams["sources"].write(np.asarray(sources, np.int32))
            streams["targets"].write(np.asarray(targets, np.int32))
        for stream in streams.values():
            stream.close()
    finally:
        for stream in streams.values():
            if not stream.handle.closed:
                stream.handle.close()
                stream.tmp.unlink(missing_ok=True)
    return list(names)


def window_store(name: str, stream: np.ndarray, window: int) -> ExampleStore:
    """Fixed-length windows over a token stream (pre-training): every token is a label."""
    count = len(stream) // window
    tokens = np.asarray(stream[: count * window], dtype=np.int32)
    offsets = np.arange(count + 1, dtype=np.int64) * window
    return ExampleStore(name, tokens, tokens, offsets)
