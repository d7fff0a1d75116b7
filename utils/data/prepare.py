"""Stage 1 wiring: SFT dataset config -> cleaned, mixed, tokenized, sharded corpus (see utils.data.shards).

Two streaming passes keep memory flat however large the sources are:

* pass 1 (read and encode): each source is read row by row (utils.data.conversations), cleaned and filtered
  and tokenized in worker processes, in order; the main process removes duplicates, assigns the split
  from the conversation hash and appends the encoded example to a per-source spill file;
* pass 2 (mix and write): the per-source multipliers are solved from the pass-1 counts (utils.data.mixture)
  and the spill files are read back interleaved across sources and written into shards.

Everything lands in a temp directory beside the output that is renamed into place at the end, so an
interrupted run leaves nothing half written. Same inputs give byte-identical shards.
"""
from __future__ import annotations

import dataclasses
import heapq
import math
import os
import resource
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from utils.common.config import load_config
from utils.common.config_schema import setting
from utils.common.errors import UserError
from utils.common.locks import exclusive
from utils.common.publish import atomic_dir
from utils.data.conversations import Conversation, RawText, Skip, check_dataset, iter_conversations
from utils.data.data_card import build_manifest, print_summary, write_reports
from utils.data.dataset_entry import NAME_PATTERN, DatasetSpec
from utils.data.encode_workers import EncodeSettings, ExecutorRunner, InlineRunner, PoolRunner
from utils.data.filters import Deduper, QualityFilters
from utils.data.messages import TOOL_USE_KEYS
from utils.data.mixture import MixtureConfig, check_mixture, mixture_warnings, repeats, solve_multipliers, split_of
from utils.data.shards import ShardWriter
from utils.data.templates import TEMPLATES, TRAIN_ON, get_template, model_type_for
from utils.data.tokenizer import hf_dir_for, load_tokenizer

CHUNK = 64
"""Conversations per task sent to a worker: large enough to amortise pickling, small for the window."""
MAX_LISTED_SKIPS = 1000
SAMPLES_PER_SOURCE = 20
"""The first conversations of each source carry their text back, for the data card's example."""
OVERLONG = ("drop", "truncate")
"""What output_params.overlong does with a conversation longer than sequence_length."""


@dataclass
class OutputParams:
    """``output_params`` of an SFT dataset config."""

    sequence_length: int = setting(2048, minimum=16)
    """Maximum tokens per example; longer conversations are handled as overlong says."""
    shard_size: int = setting(10000, minimum=1)
    """Examples per output shard file."""
    train_ratio: float = setting(0.95, exclusiveMinimum=0, maximum=1)
    """Share of conversations that go to the training split, decided by a hash of each conversation (stable when
    sources are added); the rest is validation. 1 means no validation split."""
    overlong: str = setting("truncate", enum=OVERLONG)
    """What to do with a conversation longer than sequence_length: drop it, or truncate it by dropping trailing
    turns so it still ends after a complete assistant turn and its end-of-turn token (dropped when even the first
    exchange does not fit)."""


@dataclass
class SFTDatasetConfig:
    """An SFT dataset config (config/sft_datasets/*.json, schema config/schemas/sft_dataset.schema.json)."""

    name: str = setting(pattern=NAME_PATTERN)
    """Name of the prepared corpus; also the name of its output folder."""
    datasets: list[DatasetSpec] = setting(minItems=1)
    """The sources to read, in order."""
    description: str = ""
    """Free text for humans and the data card."""
    template: str = setting("chatml", enum=TEMPLATES)
    """Chat template that renders messages to text: chatml, instruct, chat (Human:/Assistant: lines), alpaca, or
    tokenizer (the tokenizer's own chat template)."""
    output_params: OutputParams = field(default_factory=OutputParams)
    """Shape of the tokenized output."""
    quality_filters: QualityFilters = field(default_factory=QualityFilters)
    """Rules that drop low-quality conversations before tokenization; lengths are in characters."""
    mixture: MixtureConfig = field(default_factory=MixtureConfig)
    """How the sources are mixed in the output."""
    train_on: str = setting("all_assistant_turns", enum=TRAIN_ON)
    """Which tokens carry the loss: every assistant turn, or only the last one (each with its end-of-turn token)."""
    seed: int = 42
    """Seed of the mixture's sampling (which examples a fractional multiplier keeps or repeats); the train/val split
    depends only on each conversation's content."""
    max_train_examples: int | None = setting(None, minimum=1)
    """Write at most this many training examples in all, after mixing: a seeded sample that keeps the mixture's
    shares (each source's max_examples caps what is read from it); null writes every one."""

    def __post_init__(self) -> None:
        names = [d.name for d in self.datasets]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise UserError(f"datasets: name {', '.join(repeated)} used more than once; names must be unique")
        if self.train_on not in TRAIN_ON:
            raise UserError(f"train_on: unknown value '{self.train_on}'; use one of {', '.join(TRAIN_ON)}")
        check_mixture(self.mixture, names, {d.name: d.domain for d in self.datasets})


def load_dataset_config(path: str | Path) -> SFTDatasetConfig:
    return load_config(path, "sft_dataset", SFTDatasetConfig)


LOCAL_TYPES = {".json": "json", ".jsonl": "jsonl", ".gz": "jsonl", ".parquet": "parquet", ".csv": "csv"}
"""The reader of a local copy, from its file name."""


def with_local_copies(config: SFTDatasetConfig, copies: dict[str, str], flag: str) -> SFTDatasetConfig:
    """The config with its hub datasets read from local copies ({hub name: file}), each replacement said in one
    line; a copy that names no hub dataset of the config is refused (a typo would train on the wrong data)."""
    hub = {d.dataset_name: d for d in config.datasets if d.type == "huggingface"}
    unknown = sorted(set(copies) - set(hub))
    if unknown:
        raise UserError(f"{flag} {unknown[0]}: names no huggingface dataset of this config (its hub datasets: "
                        f"{', '.join(sorted(hub)) or 'none'})")
    datasets = []
    for spec in config.datasets:
        path = copies.get(spec.dataset_name) if spec.type == "huggingface" else None
        if path is None:
            datasets.append(spec)
            continue
        kind = LOCAL_TYPES.get(Path(path).suffix.lower())
        if kind is None:
            raise UserError(f"{flag} {spec.dataset_name}={path}: cannot tell the file type; give a .json, .jsonl, "
                            ".jsonl.gz, .parquet or .csv file")
        print(f"dataset '{spec.name}': {spec.dataset_name} read from the local copy {path} ({flag})", flush=True)
        datasets.append(dataclasses.replace(spec, type=kind, dataset_name=path, split="train", dataset_config=None,
                                            data_files=None))
    return dataclasses.replace(config, datasets=datasets)


# ---------------------------------------------------------------------- statistics
@dataclass
class SourceStats:
    """What happened to one source's rows; counters are keyed by split or by reason."""

    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    dropped: Counter = field(default_factory=Counter)
    kept: Counter = field(default_factory=Counter)
    truncated: int = 0
    written: Counter = field(default_factory=Counter)
    tokens: Counter = field(default_factory=Counter)
    supervised: Counter = field(default_factory=Counter)
    tool_use: Counter = field(default_factory=Counter)
    """Kept conversations: ``conversations_with_tools``, ``tool_calls``, ``tool_results``."""
    traces: Counter = field(default_factory=Counter)
    """Kept conversations: reasoning ``traces`` in the data, ``rendered`` of them in the token ids."""


@dataclass
class RunStats:
    sources: dict[str, SourceStats]
    skipped_rows: list[dict] = field(default_factory=list)
    drop_examples: dict[str, list[str]] = field(default_factory=dict)
    samples: dict[str, tuple[int, tuple]] = field(default_factory=dict)
    """source -> (tokens, messages): the shortest of its first SAMPLES_PER_SOURCE kept conversations."""
    lengths: Counter = field(default_factory=Counter)
    multipliers: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    capped: int = 0
    """Training examples left out by max_train_examples."""

    def skip(self, item: Skip, strict: bool) -> None:
        if strict:
            raise UserError(f"{item.origin}: malformed row ({item.reason}: {item.detail}); fix it, or run "
                            "without --strict to skip and count such rows")
        self.sources[item.source].skipped[item.reason] += 1
        if len(self.skipped_rows) < MAX_LISTED_SKIPS:
            self.skipped_rows.append({"source": item.source, "origin": item.origin,
                                      "reason": item.reason, "detail": item.detail})

    def drop(self, source: str, reason: str, origin: str) -> None:
        self.sources[source].dropped[reason] += 1
        listed = self.drop_examples.setdefault(reason, [])
        if len(listed) < 5:
            listed.append(origin)


# ---------------------------------------------------------------------- pass 1: read, dedupe, spill
def chunked(items: Iterable[Conversation | RawText | Skip], stats: RunStats, strict: bool,
            reasoning: str = "train") -> Iterator[list[tuple]]:
    """Conversations (with their dataset's ``reasoning`` mode) in worker-sized chunks; Skips are counted here
    and never sent."""
    chunk: list[tuple] = []
    for item in items:
        stats.sources[item.source].read += 1
        if isinstance(item, Skip):
            stats.skip(item, strict)
            continue
        want = stats.sources[item.source].read <= SAMPLES_PER_SOURCE
        payload = (item.text,) if isinstance(item, RawText) else (item.messages, item.tools, reasoning)
        chunk.append((*payload, item.source, item.origin, want))
        if len(chunk) == CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def read_and_encode(config: SFTDatasetConfig, runner, spill_dir: Path, stats: RunStats,
                    strict: bool, progress) -> None:
    """Pass 1: every source into its spill file ``<index>.tsv`` (split, hash, tokens, supervised, line)."""
    dedupe = Deduper(config.quality_filters.dedupe)
    for index, spec in enumerate(config.datasets):
        source = stats.sources[spec.name]
        with open(spill_dir / f"{index}.tsv", "w", encoding="utf-8") as spill:
            items = iter_conversations(spec, Path.cwd())
            for out in runner.map(chunked(items, stats, strict, spec.reasoning)):
                progress.update(1)
                if out.reason:
                    stats.drop(spec.name, out.reason, out.origin)
                    continue
                if dedupe.is_duplicate(out.digest):
                    stats.drop(spec.name, "duplicate", out.origin)
                    continue
                split = split_of(out.digest, config.output_params.train_ratio)
                spill.write(f"{split}\t{out.digest.hex()}\t{out.tokens}\t{out.supervised}\t{out.line}\n")
                source.kept[split] += 1
                source.truncated += out.truncated
                source.tool_use.update(dict(zip(TOOL_USE_KEYS, out.tool_use)))
                source.traces.update(dict(zip(("traces", "rendered"), out.traces)))
                best = stats.samples.get(spec.name)
                if out.sample and (best is None or out.tokens < best[0]):  # the card shows a short one
                    stats.samples[spec.name] = (out.tokens, out.sample)


# ---------------------------------------------------------------------- pass 2: mixture and shards
def _spill_stream(path: Path, index: int, copies: int, lines: int) -> Iterator[tuple]:
    """``copies`` passes over one spill file, keyed by progress so sources interleave evenly."""
    total, pos = copies * lines, 0
    for copy in range(copies):
        with open(path, encoding="utf-8") as handle:
            for raw in handle:
                pos += 1
                yield (pos / total, index, copy, raw)


def mix_and_write(config: SFTDatasetConfig, spill_dir: Path, out_dir: Path, stats: RunStats) -> dict:
    """Pass 2: solve multipliers, write every kept example its number of times; returns ``splits``."""
    names = [d.name for d in config.datasets]
    kept_train = {n: stats.sources[n].kept["train"] for n in names}
    weights = {d.name: d.weight for d in config.datasets}
    domain = {d.name: d.domain for d in config.datasets}
    stats.multipliers = {n: round(m, 12) for n, m in
                         solve_multipliers(kept_train, weights, domain, config.mixture).items()}
    for line in mixture_warnings(config.mixture, stats.multipliers, kept_train, domain):
        print(line, flush=True)
    streams = []
    for index, name in enumerate(names):
        copies = math.ceil(stats.multipliers[name])
        lines = sum(stats.sources[name].kept.values())
        if copies and lines:
            streams.append(_spill_stream(spill_dir / f"{index}.tsv", index, copies, lines))
    writers = {split: ShardWriter(out_dir, split, config.output_params.shard_size) for split in ("train", "val")}
    cap, written = config.max_train_examples, 0
    for _key, index, copy, raw in heapq.merge(*streams):
        split, digest, tokens, supervised, line = raw.rstrip("\n").split("\t", 4)
        name = names[index]
        times = repeats(stats.multipliers[name], bytes.fromhex(digest), config.seed)
        if copy >= (times if split == "train" else min(times, 1)):
            continue
        if split == "train":  # the merge order is a seeded shuffle: the first ``cap`` keep the mixture's shares
            if cap is not None and written >= cap:
                stats.capped += 1
                continue
            written += 1
        writers[split].add(line, int(tokens), int(supervised))
        source = stats.sources[name]
        source.written[split] += 1
        source.tokens[split] += int(tokens)
        source.supervised[split] += int(supervised)
        stats.lengths[int(tokens)] += 1
    if stats.capped:
        print(f"max_train_examples {cap}: {stats.capped:,} more training examples left out (the mixture's shares "
              "kept)", flush=True)
    return {split: writer.close() for split, writer in writers.items()}


# ---------------------------------------------------------------------- the stage
def default_num_proc() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def prepare_corpus(config: SFTDatasetConfig, tokenizer_path: str | Path, output_dir: str | Path,
                   force: bool = False, num_proc: int | None = None, strict: bool = False,
                   config_path: str | Path | None = None, executor=None) -> dict:
    """Run the whole stage; returns the manifest. Output appears atomically at ``output_dir``. With an
    ``executor`` (utils/data/executors.py, e.g. Ray) the encoding runs as its tasks instead of local processes."""
    hf_dir = hf_dir_for(tokenizer_path)
    model_type = model_type_for(hf_dir)
    template = get_template(config.template, load_tokenizer(hf_dir), model_type)  # fail before reading
    for spec in config.datasets:  # missing files and bad patterns: before the output is touched
        check_dataset(spec, Path.cwd())
    num_proc = max(1, num_proc or default_num_proc())
    settings = EncodeSettings(str(hf_dir), config.template, model_type, config.quality_filters,
                              config.output_params.sequence_length, config.output_params.overlong,
                              config.train_on)
    stats = RunStats({d.name: SourceStats() for d in config.datasets})
    print(f"template {template.name} (family {template.family}); " + "; ".join(template.notes or ["no notes"]))
    print(f"sequence_length {config.output_params.sequence_length}, overlong {config.output_params.overlong}, "
          f"train_on {config.train_on}, {f'executor {executor.describe()}' if executor else f'num_proc {num_proc}'}, "
          f"output {output_dir}", flush=True)
    with exclusive(output_dir), atomic_dir(output_dir, force, kind="prepare") as tmp:
        splits = build_shards(config, settings, num_proc, tmp, stats, strict, executor)
        manifest = build_manifest(config, template, hf_dir, splits, stats)
        write_reports(tmp, config, template, manifest, stats, num_proc, config_path)
        print_summary(config, manifest, stats)
        if not splits["train"]["conversations"]:
            raise UserError(_nothing_left(config_path or config.name, stats))
    return manifest


def _nothing_left(where, stats: RunStats) -> str:
    """Why no training example is left, and the fix that helps: malformed rows are fixed in the data, filtered
    ones by loosening the filters."""
    skipped = sum((s.skipped for s in stats.sources.values()), Counter())
    dropped = sum((s.dropped for s in stats.sources.values()), Counter())
    if skipped and not dropped:
        reasons = ", ".join(f"{reason} {count}" for reason, count in skipped.most_common())
        return (f"{where}: no training example left: every row was malformed ({reasons}); fix the files and rows "
                "named above (quality_filters do not apply to them)")
    return (f"{where}: no training example left after filtering; see the drop reasons above and loosen "
            "quality_filters or sequence_length")


def build_shards(config: SFTDatasetConfig, settings: EncodeSettings, num_proc: int, out_dir: Path,
                 stats: RunStats, strict: bool, executor=None) -> dict:
    """Both passes, with the spill files in ``out_dir/.spill`` removed afterwards; returns ``splits``."""
    start, cpu_start = time.perf_counter(), cpu_seconds()
    spill_dir = out_dir / ".spill"
    spill_dir.mkdir()
    runner = (ExecutorRunner(settings, executor) if executor is not None else InlineRunner(settings)
              if num_proc == 1 else PoolRunner(settings, num_proc))
    try:
        with tqdm(desc="encode", unit=" conv", disable=None, mininterval=1.0) as progress:
            read_and_encode(config, runner, spill_dir, stats, strict, progress)
    finally:
        runner.close()
    stats.timings["read_encode_s"] = time.perf_counter() - start
    splits = mix_and_write(config, spill_dir, out_dir, stats)
    for spill in spill_dir.iterdir():
        spill.unlink()
    spill_dir.rmdir()
    stats.timings["total_s"] = time.perf_counter() - start
    stats.timings["cpu_s"] = cpu_seconds() - cpu_start
    return splits


def cpu_seconds() -> float:
    """CPU time of this process and of its finished worker processes (user + system)."""
    own, workers = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + workers.ru_utime + workers.ru_stime
