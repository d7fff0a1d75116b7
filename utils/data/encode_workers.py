"""Pass 1 of the prepare stage, the part that runs in worker processes: clean, filter, tokenize, fit.

``utils.data.prepare`` reads the rows and sends conversations here in chunks; each comes back as an
``Outcome``: a drop reason, or the example's shard line with its hash and counts. Outcomes are named
tuples, so that pickling them back from a worker costs little; results come back in input order, which
keeps the output byte-identical whatever the number of processes.
"""
from __future__ import annotations

import array
import hashlib
import multiprocessing
import signal
from collections import deque
from dataclasses import dataclass
from typing import Iterable, Iterator, NamedTuple

from utils.common.errors import UserError
from utils.common.labels import IGNORE
from utils.data.filters import QualityFilters, clean_messages, conversation_hash, fit_to_length, text_drop_reason
from utils.data.messages import is_structured, part_counts
from utils.data.reasoning import apply_mode
from utils.data.shards import example_line
from utils.data.templates import get_template
from utils.data.tool_template import ToolTemplateError
from utils.data.tokenizer import load_tokenizer


@dataclass(frozen=True)
class EncodeSettings:
    """Everything a worker needs; picklable, so it also travels to spawned workers."""

    tokenizer_dir: str
    template: str
    model_type: str | None
    filters: QualityFilters
    sequence_length: int
    overlong: str
    train_on: str


class Outcome(NamedTuple):
    """One conversation after filters and tokenization: a drop ``reason``, or the example line."""

    origin: str
    reason: str = ""
    digest: bytes = b""
    line: str = ""
    tokens: int = 0
    supervised: int = 0
    truncated: bool = False
    sample: tuple = ()
    tool_use: tuple = ()
    """``messages.part_counts`` of a kept conversation that uses tools (empty for the rest)."""
    traces: tuple = ()
    """(reasoning traces in the data, traces in the ids) of a kept conversation with traces (else empty)."""


_WORKER: dict = {}  # per process: set once by init_worker, read by encode_chunk


def init_worker(settings: EncodeSettings) -> None:
    """Load the tokenizer and template once per process."""
    if multiprocessing.parent_process() is not None:  # Ctrl-C is the main process's to handle
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    tokenizer = load_tokenizer(settings.tokenizer_dir)
    _WORKER.update(settings=settings, template=get_template(settings.template, tokenizer, settings.model_type))


def encode_chunk(chunk: list[tuple]) -> list[Outcome]:
    out: list[Outcome] = []
    for item in chunk:
        if isinstance(item[0], str):
            out += encode_text(*item)
        else:
            out.append(encode_one(*item))
    return out


def encode_text(text: str, source: str, origin: str, want_sample: bool) -> list[Outcome]:
    """Raw text (replay) -> chunks of at most ``sequence_length`` tokens, each token supervised.

    The document ends with EOS, as in pre-training; special-token text stays plain text. The first token of
    a chunk has nothing before it to be predicted from, so it alone carries no label.
    """
    s, template = _WORKER["settings"], _WORKER["template"]
    tokenizer = template.tokenizer
    eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
    ids = tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"] + eos
    size = s.sequence_length
    outcomes = []
    for n, start in enumerate(range(0, len(ids), size)):
        piece = ids[start:start + size]
        where = f"{origin}#chunk{n}"
        if len(piece) < 2:
            outcomes.append(Outcome(where, "too_short"))
            continue
        digest = hashlib.sha256(b"text\x1f" + array.array("I", piece).tobytes()).digest()
        labels = [IGNORE] + piece[1:]
        outcomes.append(Outcome(where, "", digest, example_line(piece, labels, source), len(piece), len(piece) - 1))
    return outcomes


def encode_one(messages: tuple, tools: tuple, reasoning: str, source: str, origin: str,
               want_sample: bool) -> Outcome:
    """Clean, filter, tokenize and fit one conversation, its traces as its dataset's ``reasoning`` says (runs in
    a worker)."""
    s, template = _WORKER["settings"], _WORKER["template"]
    counts = part_counts(messages, tools)
    msgs = clean_messages(apply_mode(messages, reasoning), s.filters)
    reason = text_drop_reason(msgs, s.filters)
    if reason:
        return Outcome(origin, reason)
    try:
        encoded = template.encode(msgs, s.train_on, tools, reasoning)
        if s.filters.max_tokens is not None and len(encoded.input_ids) > s.filters.max_tokens:
            return Outcome(origin, "too_many_tokens")
        encoded, note = fit_to_length(template, msgs, encoded, s.sequence_length, s.overlong, s.train_on, tools,
                                      reasoning)
    except ToolTemplateError as err:
        if err.reason == "template_without_tools":  # every tool-using row would go: refuse the run instead
            raise UserError(f"{origin}: the conversation uses tools (a tools list, tool calls or results) but {err}; "
                            "use template 'tokenizer' with a tokenizer whose chat_template renders tools (Qwen2.5's "
                            "does)") from None
        if err.reason == "template_without_reasoning":  # every trace would be lost: refuse the run instead
            raise UserError(f"{origin}: the conversation holds reasoning traces but {err}; set the dataset's "
                            "reasoning to drop, or use a template that renders them (chatml, or 'tokenizer' "
                            "with Qwen3's chat_template)") from None
        return Outcome(origin, err.reason)
    except ValueError:
        return Outcome(origin, "template_error")
    if encoded is None:
        return Outcome(origin, note)
    if not encoded.num_supervised:
        return Outcome(origin, "no_supervised_tokens")
    return Outcome(origin, "", conversation_hash(msgs, tools),
                   example_line(encoded.input_ids, encoded.labels, source), len(encoded.input_ids),
                   encoded.num_supervised, note == "truncated", (msgs, tools) if want_sample else (),
                   counts[:3] if is_structured(msgs, tools) else (), (counts[3], encoded.traces) if counts[3] else ())


class InlineRunner:
    """``num_proc`` 1: encode in this process (no pickling); same interface as PoolRunner."""

    def __init__(self, settings: EncodeSettings) -> None:
        init_worker(settings)

    def map(self, chunks: Iterable[list[tuple]]) -> Iterator[Outcome]:
        for chunk in chunks:
            yield from encode_chunk(chunk)

    def close(self) -> None:
        pass


class PoolRunner:
    """Worker processes with results in input order and at most ``2 * num_proc`` chunks in flight.

    ``Pool.imap`` would read its whole input ahead of the workers (no back-pressure), so the window of
    ``apply_async`` results keeps memory flat instead.
    """

    def __init__(self, settings: EncodeSettings, num_proc: int) -> None:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)
        self.pool = ctx.Pool(num_proc, initializer=init_worker, initargs=(settings,))
        self.window = 2 * num_proc

    def map(self, chunks: Iterable[list[tuple]]) -> Iterator[Outcome]:
        pending: deque = deque()
        for chunk in chunks:
            pending.append(self.pool.apply_async(encode_chunk, (chunk,)))
            if len(pending) >= self.window:
                yield from pending.popleft().get()
        while pending:
            yield from pending.popleft().get()

    def close(self) -> None:
        self.pool.terminate()
        self.pool.join()


def encode_with(task: tuple[EncodeSettings, list[tuple]]) -> list[Outcome]:
    """``encode_chunk`` in a worker that gets its settings with each chunk (a Ray task, on any node): the
    tokenizer and template are loaded once per worker process and settings."""
    settings, chunk = task
    if _WORKER.get("settings") != settings:
        init_worker(settings)
    return encode_chunk(chunk)


class ExecutorRunner:
    """Chunks encoded as tasks of an executor (utils/data/executors.py: Ray), results in input order; the
    driver keeps reading, dedup and the mixture, so they stay exact."""

    def __init__(self, settings: EncodeSettings, executor) -> None:
        self.settings, self.executor = settings, executor

    def map(self, chunks: Iterable[list[tuple]]) -> Iterator[Outcome]:
        for outcomes in self.executor.map(encode_with, ((self.settings, chunk) for chunk in chunks)):
            yield from outcomes

    def close(self) -> None:
        pass  # the executor belongs to the caller
