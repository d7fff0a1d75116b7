"""Raw text prepared ahead of training (scripts/01_prepare_text_corpus.py): text sources -> token shards.

The sources are cut into partitions (``text_sources.partitions``: runs of files, byte ranges of JSON lines);
each partition is one task (``tokenize_partition``) that reads its documents, encodes them as the launch does
(``pretrain_data.encode_documents``: tokens + EOS, the split from a hash of the text) and writes its own part
files, ``<k>.train.bin`` and ``<k>.val.bin``, returning a small summary. The tasks run in this process, in
local worker processes or on Ray (utils/data/executors.py); one merge step then renames the parts into shards
in partition order and writes the manifest and the data card. Memory stays flat in the corpus size (a task holds
one batch of documents, the merge one summary per partition), and the shards depend only on the input and the
partition size, never on the number of processes or the executor.

Layout of a prepared text corpus::

    train_00000.bin ...   uint32 little-endian token ids: documents, each followed by EOS, in source order
    val_00000.bin ...     the same for the validation documents (``is_val``: a hash of the text)
    manifest.json         kind "text", tokenizer_metadata, val_ratio, splits (per shard: file, sha256, source,
                          documents, tokens), sources, the config, library versions, created_at
    DATA_CARD.md          sources, counts, an excerpt of each source (no timings: byte-identical for one input)
    training_state.json   executor, processes, partitions, timings, tokens/s

The train shards of a corpus, concatenated, are the token stream ``01_pretrain.py`` builds at launch from the
same sources (``build_streams``), so training from either is the same run.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from utils.common.locks import exclusive
from utils.common.publish import atomic_dir, write_json_atomic, write_text_atomic
from utils.common.errors import UserError
from utils.common.markdown import markdown_table
from utils.data.data_card import code_fence, library_versions, tokenizer_metadata
from utils.data.pretrain_data import BATCH_DOCS, TOKEN_DTYPE, encode_documents
from utils.data.shards import FORMAT_VERSION, MANIFEST, SPLITS, verify_data_dir
from utils.data.text_sources import Partition, TextSource, input_bytes, partitions, read_partition
from utils.data.tokenizer import hf_dir_for, load_tokenizer

KIND = "text"
EXCERPT_CHARS = 300
"""Characters of each source's first document shown in the data card."""
DEFAULT_PARTITION_MB = 16


@dataclass
class TextCorpusSpec:
    """What is prepared: the ``data`` block of a pre-training config (its sources and val_ratio)."""

    name: str
    sources: list[TextSource]
    val_ratio: float
    description: str = ""


@dataclass(frozen=True)
class TextTask:
    """One partition to tokenize, with everything a worker (local or on another machine) needs."""

    partition: Partition
    source: TextSource
    tokenizer_dir: str
    val_ratio: float
    parts_dir: str


_TOKENIZERS: dict = {}  # per worker process: loaded once per tokenizer directory


def tokenize_partition(task: TextTask) -> dict:
    """Read, encode and write one partition; its summary (counts, part hashes, an excerpt, seconds)."""
    start, cpu = time.perf_counter(), time.process_time()
    tokenizer = _TOKENIZERS.get(task.tokenizer_dir) or _TOKENIZERS.setdefault(
        task.tokenizer_dir, load_tokenizer(task.tokenizer_dir))
    index = task.partition.index
    paths = {split: Path(task.parts_dir) / f"{index:05d}.{split}.bin" for split in SPLITS}
    digests = {split: hashlib.sha256() for split in SPLITS}
    summary = {"index": index, "source": task.source.name, "documents": dict.fromkeys(SPLITS, 0),
               "tokens": dict.fromkeys(SPLITS, 0), "excerpt": None, "input_bytes": input_bytes(task.partition)}
    handles = {split: open(path, "wb") for split, path in paths.items()}
    try:
        batch: list[str] = []
        for doc in read_partition(task.source, task.partition):
            if summary["excerpt"] is None:
                summary["excerpt"] = doc[:EXCERPT_CHARS]
            batch.append(doc)
            if len(batch) == BATCH_DOCS:
                _write(batch, tokenizer, task.val_ratio, handles, digests, summary)
                batch = []
        _write(batch, tokenizer, task.val_ratio, handles, digests, summary)
    finally:
        for handle in handles.values():
            handle.close()
    summary["sha256"] = {split: digests[split].hexdigest() for split in SPLITS}
    summary["seconds"], summary["cpu_s"] = time.perf_counter() - start, time.process_time() - cpu
    return summary


def _write(docs: list[str], tokenizer, val_ratio: float, handles, digests, summary: dict) -> None:
    for split, ids in encode_documents(docs, tokenizer, val_ratio):
        data = ids.tobytes()
        handles[split].write(data)
        digests[split].update(data)
        summary["documents"][split] += 1
        summary["tokens"][split] += len(ids)


# ---------------------------------------------------------------------- the stage
@dataclass
class TextRun:
    """What the stage did, for the reports."""

    summaries: list[dict] = field(default_factory=list)
    timings: dict = field(default_factory=dict)


def prepare_text_corpus(spec: TextCorpusSpec, tokenizer_path: str | Path, output_dir: str | Path, executor,
                        force: bool = False, partition_mb: float = DEFAULT_PARTITION_MB,
                        config_path: str | Path | None = None) -> dict:
    """Run the whole stage with ``executor``; returns the manifest. Output appears atomically at ``output_dir``."""
    hf_dir = Path(hf_dir_for(tokenizer_path)).resolve()
    tokenizer = load_tokenizer(hf_dir)  # fail before reading
    if tokenizer.eos_token_id is None:
        raise UserError(f"--tokenizer_path {tokenizer_path}: the tokenizer has no EOS token to end documents with")
    parts = partitions(spec.sources, max(1, int(partition_mb * 2**20)))  # missing files: before the output
    print(f"{len(parts)} partition(s) of about {partition_mb:g} MB; executor {executor.describe()}; "
          f"output {output_dir}", flush=True)
    run = TextRun()
    with exclusive(output_dir), atomic_dir(output_dir, force, kind="prepare_text") as tmp:
        parts_dir = tmp / ".parts"
        parts_dir.mkdir()
        start = time.perf_counter()
        tasks = (TextTask(p, spec.sources[p.source], str(hf_dir), spec.val_ratio, str(parts_dir)) for p in parts)
        with tqdm(total=len(parts), desc="tokenize", unit=" partition", disable=None) as bar:
            for summary in executor.map(tokenize_partition, tasks):
                run.summaries.append(summary)
                bar.update(1)
        run.timings["tokenize_s"] = time.perf_counter() - start
        splits = _merge(parts_dir, tmp, run.summaries)
        run.timings["total_s"] = time.perf_counter() - start
        manifest = _manifest(spec, tokenizer, hf_dir, splits, run, partition_mb)
        write_json_atomic(tmp / MANIFEST, manifest)
        write_text_atomic(tmp / "DATA_CARD.md", data_card(spec, manifest, run))
        write_json_atomic(tmp / "training_state.json", _state(run, executor, config_path, manifest))
        _print_summary(manifest, run)
        if not splits["train"]["documents"]:
            raise UserError(f"{config_path or spec.name}: data.sources hold no training document; add text")
    return manifest


def _merge(parts_dir: Path, out_dir: Path, summaries: list[dict]) -> dict:
    """The non-empty parts renamed into numbered shards, in partition order; the splits of the manifest."""
    splits = {}
    for split in SPLITS:
        shards = []
        for summary in sorted(summaries, key=lambda s: s["index"]):
            part = parts_dir / f"{summary['index']:05d}.{split}.bin"
            if not summary["tokens"][split]:
                part.unlink()
                continue
            name = f"{split}_{len(shards):05d}.bin"
            os.replace(part, out_dir / name)
            shards.append({"file": name, "sha256": summary["sha256"][split], "source": summary["source"],
                           "documents": summary["documents"][split], "tokens": summary["tokens"][split]})
        splits[split] = {"num_shards": len(shards), "documents": sum(s["documents"] for s in shards),
                         "total_tokens": sum(s["tokens"] for s in shards), "shards": shards}
    parts_dir.rmdir()
    return splits


def _manifest(spec: TextCorpusSpec, tokenizer, hf_dir: Path, splits: dict, run: TextRun, partition_mb: float) -> dict:
    sources = {}
    for src in spec.sources:
        mine = [s for s in run.summaries if s["source"] == src.name]
        sources[src.name] = {"type": src.type, "partitions": len(mine),
                             **{f"documents_{k}": sum(s["documents"][k] for s in mine) for k in SPLITS},
                             **{f"tokens_{k}": sum(s["tokens"][k] for s in mine) for k in SPLITS}}
    return {"format_version": FORMAT_VERSION, "kind": KIND, "name": spec.name,
            "created_at": time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime()),
            "tokenizer_metadata": tokenizer_metadata(tokenizer, hf_dir), "token_dtype": "uint32 little-endian",
            "val_ratio": spec.val_ratio, "partition_mb": partition_mb, "splits": splits, "sources": sources,
            "config": {"sources": [asdict(s) for s in spec.sources], "val_ratio": spec.val_ratio},
            "versions": library_versions()}


def _state(run: TextRun, executor, config_path, manifest: dict) -> dict:
    tokens = sum(manifest["splits"][k]["total_tokens"] for k in SPLITS)
    return {"config_path": str(config_path) if config_path else None, "executor": executor.describe(),
            "partitions": len(run.summaries), "timings": {k: round(v, 3) for k, v in run.timings.items()},
            "tokens_per_s": round(tokens / max(run.timings["tokenize_s"], 1e-9), 1),
            "task_cpu_s": round(sum(s["cpu_s"] for s in run.summaries), 3),
            "input_bytes": sum(s["input_bytes"] for s in run.summaries)}


def data_card(spec: TextCorpusSpec, manifest: dict, run: TextRun) -> str:
    """DATA_CARD.md: what was prepared, from what, how it was cut (nothing that changes between runs)."""
    meta = manifest["tokenizer_metadata"]
    lines = [f"# Data card: {spec.name} (raw text)", "", spec.description or "(no description in the config)", "",
             f"- tokenizer: `{meta['tokenizer_sha256']}` (vocab {meta['vocab_size']}, EOS id {meta['eos_token_id']})",
             "- each document is its tokens followed by EOS, in source order; special-token text stays plain text",
             f"- validation: documents whose text hashes below val_ratio {spec.val_ratio} (stable across runs)",
             f"- {len(run.summaries)} partition(s) of about {manifest['partition_mb']:g} MB of input; the shards "
             "do not depend on the number of processes or the executor", "", "## Sources", ""]
    lines += markdown_table(["source", "type", "data", "partitions", "train documents", "val documents",
                             "train tokens", "val tokens"], [
        [src.name, src.type, f"`{src.dataset_name or ', '.join(src.paths)}`", s["partitions"], s["documents_train"],
         s["documents_val"], s["tokens_train"], s["tokens_val"]]
        for src, s in zip(spec.sources, manifest["sources"].values())])
    lines += ["", "## Splits", ""]
    lines += markdown_table(["split", "documents", "tokens", "shards"], [
        [k, v["documents"], v["total_tokens"], v["num_shards"]] for k, v in manifest["splits"].items()])
    lines += ["", "## Excerpts", "", f"The first {EXCERPT_CHARS} characters of each source's first document.", ""]
    for src in spec.sources:
        excerpt = next((s["excerpt"] for s in sorted(run.summaries, key=lambda s: s["index"])
                        if s["source"] == src.name and s["excerpt"] is not None), None)
        if excerpt is not None:
            fence = code_fence(excerpt)
            lines += [f"### {src.name}", "", fence + "text", excerpt, fence, ""]
    return "\n".join(lines).rstrip() + "\n"


def _print_summary(manifest: dict, run: TextRun) -> None:
    for split, v in manifest["splits"].items():
        print(f"{split}: {v['documents']:,} documents, {v['total_tokens']:,} tokens in {v['num_shards']} shard(s)")
    tokens = sum(v["total_tokens"] for v in manifest["splits"].values())
    print(f"done in {run.timings['total_s']:.1f}s ({tokens / max(run.timings['tokenize_s'], 1e-9):,.0f} tokens/s)",
          flush=True)


# ---------------------------------------------------------------------- reader side
def load_text_corpus(data_dir: str | Path, fingerprint: str | None) -> tuple[dict, dict[str, np.ndarray]]:
    """The verified manifest of a prepared text corpus (tokenizer and every shard's sha256 checked) and its
    {"train", "val"} token streams (the shards memory-mapped and joined in order)."""
    data_dir = Path(data_dir)
    manifest = verify_data_dir(data_dir, fingerprint, kind=KIND)
    streams = {}
    for split in SPLITS:
        arrays = [np.memmap(data_dir / s["file"], dtype=TOKEN_DTYPE, mode="r")
                  for s in manifest["splits"][split]["shards"]]
        streams[split] = (arrays[0] if len(arrays) == 1 else np.concatenate(arrays)) if arrays \
            else np.zeros(0, TOKEN_DTYPE)
    return manifest, streams
