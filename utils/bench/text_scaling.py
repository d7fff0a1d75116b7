"""The raw-text prepare stage's speed by executor and process count (make bench-scaling, the text part).

A generated text corpus (files of the scaling benchmark's conversations as plain text, never in the project) is
prepared by utils/data/text_corpus.py with 1 and 2 local processes and, where ray is installed, 1 and 2 Ray
workers of a local instance. Tokens/s is the tokenizing phase (all partitions, the merge excluded); a Ray
instance's start is timed apart. Every run's shards are checked to be byte-identical to the first's.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import time
from dataclasses import dataclass
from pathlib import Path

from utils.bench.scaling import conversation
from utils.data.executors import LocalExecutor, RayExecutor
from utils.data.text_corpus import TextCorpusSpec, prepare_text_corpus
from utils.data.text_sources import TextSource


@dataclass
class TextResult:
    executor: str
    processes: int
    tokens: int
    tokenize_s: float
    tokens_per_s: float
    startup_s: float
    shards_sha256: str


def generate_text(root: Path, megabytes: float, files: int = 32) -> Path:
    """``files`` text files of about ``megabytes`` in all: the generated conversations as plain text."""
    root.mkdir(parents=True, exist_ok=True)
    per_file, i = int(megabytes * 2**20 / files), 0
    for k in range(files):
        lines, size = [], 0
        while size < per_file:
            row = conversation(i)["messages"]
            line = f"{row[0]['content']} {row[1]['content']}\n"
            lines.append(line)
            size += len(line)
            i += 1
        (root / f"text_{k:03d}.txt").write_text("".join(lines), encoding="utf-8")
    return root


def _shards_digest(out: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(out.glob("*.bin")):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()


def measure_text(work: Path, tokenizer: Path, megabytes: float, partition_mb: float,
                 executors: tuple[str, ...] = ("local", "ray")) -> list[TextResult]:
    """Prepare the generated text with each executor (ray only where installed) and 1 and 2 processes; the shards
    must not differ."""
    spec = TextCorpusSpec("bench_text", [TextSource(type="text_files", name="generated",
                                                    paths=[str(generate_text(work / "text", megabytes))])], 0.01)
    usable = [e for e in executors if e != "ray" or importlib.util.find_spec("ray") is not None]
    kinds = [(name, processes) for name in usable for processes in (1, 2)]
    results = []
    for name, processes in kinds:
        start = time.perf_counter()
        executor = RayExecutor(processes) if name == "ray" else LocalExecutor(processes)
        startup = time.perf_counter() - start
        out = work / f"{name}_{processes}"
        try:
            manifest = prepare_text_corpus(spec, tokenizer, out, executor, partition_mb=partition_mb)
        finally:
            executor.close()
        state = json.loads((out / "training_state.json").read_text())
        tokens = sum(manifest["splits"][s]["total_tokens"] for s in ("train", "val"))
        results.append(TextResult(name, processes, tokens, state["timings"]["tokenize_s"], state["tokens_per_s"],
                                  round(startup, 2), _shards_digest(out)))
    if len({r.shards_sha256 for r in results}) != 1:
        raise AssertionError(f"text shards differ between executors: {[(r.executor, r.processes) for r in results]}")
    return results


def text_table(results: list[TextResult]) -> str:
    """Markdown table: tokens/s per executor and process count, the speed-up against 1 local process."""
    base = results[0].tokens_per_s
    rows = ["| executor | processes | tokens | tokenize s | tokens/s | x 1 local process | executor start s |",
            "|---|---:|---:|---:|---:|---:|---:|"]
    rows += [f"| {r.executor} | {r.processes} | {r.tokens:,} | {r.tokenize_s:.2f} | {r.tokens_per_s:,.0f} | "
             f"{r.tokens_per_s / base:.2f} | {r.startup_s:.2f} |" for r in results]
    return "\n".join(rows)
