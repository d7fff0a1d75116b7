"""Row -> conversation: one small function per row layout, one contract for what comes out.

The contract (checked by ``normalize`` for every layout): a conversation is a tuple of messages
``{"role": "system"|"user"|"assistant", "content": str}``: at most one system message, first; then turns
that alternate user, assistant, ..., starting with user and ending with assistant. Contents are stripped
and never empty. To get there, every layout is normalised the same way:

* whitespace-only turns are dropped; consecutive turns of one role are merged with a blank line between
  (ShareGPT and markdown exports have them);
* leading assistant turns are dropped (a greeting before any question has nothing to answer);
* a trailing user turn is dropped (there is no answer to learn);
* what is left must hold a user turn followed by an assistant turn, else the row is a Skip.

A row that cannot become a conversation is a ``Skip`` with a short stable ``reason`` and its origin, never
an exception; only config problems raise UserError. Skip reasons: invalid_json, invalid_utf8, nul_byte,
wrong_type, missing_field, empty_field, empty_conversation, unknown_role, misplaced_system,
no_assistant_turn, unknown_format, orphan_message, deleted, no_conversation_found, single_role,
unclosed_code_fence.
"""
from __future__ import annotations

import contextlib
import re
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from utils.data.markdown_transcripts import Speakers, compile_speakers, markdown_turns, split_turns
from utils.data.sources import (ROLES, BadRow, DatasetSpec, Row, RowProblem, iter_rows, layout_for_fields,
                                resolve_files)

DEFAULT_ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                    "bing": "assistant", "bard": "assistant", "assistant": "assistant",
                    "model": "assistant", "system": "system"}
TRANSCRIPT_MARKERS = {"user": ["Human:", "User:"], "assistant": ["Assistant:", "AI:"], "system": ["System:"]}
_TRANSCRIPT_SPEAKERS = compile_speakers(TRANSCRIPT_MARKERS, use_regex=False, case_sensitive=True)
OASST_ROLES = {"prompter": "user", "assistant": "assistant"}
_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON "\ud83d" escapes without their pair decode to these


@dataclass(frozen=True)
class Conversation:
    """A validated conversation and where it came from."""

    messages: tuple[dict, ...]
    source: str
    """The dataset entry's ``name``."""
    origin: str
    """``file.jsonl:17``, ``file.json[42]``, ``hub:name[split]#42`` or ``dir/file.md``."""


@dataclass(frozen=True)
class Skip:
    """A row that gave no conversation: ``reason`` is a stable key for counting, ``detail`` is for humans."""

    source: str
    origin: str
    reason: str
    detail: str


@dataclass(frozen=True)
class RawText:
    """A document of a ``format: text`` source (replay of pre-training or domain text): every token trains."""

    text: str
    source: str
    origin: str


def iter_conversations(spec: DatasetSpec, base_dir: Path) -> Iterator[Conversation | RawText | Skip]:
    """Stream the entry's conversations and skips in file order, up to ``max_examples`` conversations.

    Relative paths in the entry resolve against ``base_dir`` (scripts pass the current directory).
    """
    if spec.max_examples == 0:
        return
    made = 0
    with contextlib.closing(_all_items(spec, base_dir)) as items:
        for item in items:
            yield item
            made += isinstance(item, (Conversation, RawText))
            if spec.max_examples is not None and made >= spec.max_examples:
                return


def _all_items(spec: DatasetSpec, base_dir: Path) -> Iterator[Conversation | RawText | Skip]:
    rows = iter_rows(spec, base_dir)
    if spec.format == "text":
        field_name = spec.text_fields.get("text", "text")
        for row in rows:
            yield raw_text(row, field_name, spec.name)
        return
    if spec.format == "oasst":
        yield from oasst_conversations(rows, spec.name)
        return
    to_turns = row_converter(spec)
    for row in rows:
        yield to_conversation(row, to_turns, spec.name)


def check_dataset(spec: DatasetSpec, base_dir: Path) -> None:
    """Fail fast, before any reading: files exist and markers compile (UserError naming entry and field)."""
    if spec.type != "huggingface":
        resolve_files(spec, base_dir)
    if spec.format not in ("oasst", "text"):
        row_converter(spec)


def to_conversation(row: Row | BadRow, to_turns: Callable[[dict], list[dict]],
                    source: str) -> Conversation | Skip:
    """Apply a layout and the contract to one row; every problem becomes a Skip at the row's origin."""
    if isinstance(row, BadRow):
        return Skip(source, row.origin, row.reason, row.detail)
    try:
        if not isinstance(row.data, dict):
            raise RowProblem("wrong_type", f"row is {_type_name(row.data)}, expected an object")
        return Conversation(normalize(to_turns(row.data)), source, row.origin)
    except RowProblem as problem:
        return Skip(source, row.origin, problem.reason, problem.detail)


def raw_text(row: Row | BadRow, field_name: str, source: str) -> RawText | Skip:
    """The text field of one row (a whole file for text_files); problems become Skips like any row's."""
    if isinstance(row, BadRow):
        return Skip(source, row.origin, row.reason, row.detail)
    value = row.data.get(field_name) if isinstance(row.data, dict) else None
    if not isinstance(value, str):
        return Skip(source, row.origin, "missing_field", f"no text field '{field_name}'")
    if not value.strip():
        return Skip(source, row.origin, "empty_field", f"field '{field_name}' is empty")
    if "\x00" in value:
        return Skip(source, row.origin, "nul_byte", f"field '{field_name}' holds a NUL byte")
    return RawText(value, source, row.origin)


def row_converter(spec: DatasetSpec) -> Callable[[dict], list[dict]]:
    """The row -> turns function for a (non-oasst) entry; markers and regexes are compiled once here."""
    if spec.type == "markdown_transcripts":
        speakers = compile_speakers(vars(spec.participants), use_regex=spec.use_regex,
                                    case_sensitive=spec.case_sensitive, ignore_lines=spec.ignore_lines,
                                    where=f"dataset '{spec.name}'")
        return lambda row: markdown_turns(row, speakers)
    fields, role_map = spec.text_fields, {**DEFAULT_ROLE_MAP, **spec.role_map}
    layouts = {
        "single_turn": lambda row: single_turn(row, fields or alpaca_fields(row), spec.input_join),
        "messages": lambda row: messages_turns(row, fields),
        "sharegpt": lambda row: sharegpt_turns(row, fields, role_map),
        "transcript": lambda row: transcript_turns(row, fields),
    }
    if spec.format != "auto":
        return layouts[spec.format]
    if fields:  # DatasetSpec checked that the keys name a layout
        return layouts[layout_for_fields(set(fields))]
    return lambda row: layouts[detect_layout(row)](row)


def detect_layout(row: dict) -> str:
    """Guess a row's layout from its keys (``format: auto`` without text_fields)."""
    if isinstance(row.get("messages"), list):
        return "messages"
    if isinstance(row.get("conversations"), list):
        return "sharegpt"
    if "instruction" in row and ("output" in row or "response" in row):
        return "single_turn"
    text = row.get("text")
    if isinstance(text, str) and "Human:" in text and "Assistant:" in text:
        return "transcript"
    if "message_id" in row and "parent_id" in row:
        raise RowProblem("unknown_format", "looks like OpenAssistant message rows: set format to oasst")
    raise RowProblem("unknown_format",
                     f"no known layout fits keys {sorted(row)[:8]}; set format and text_fields")


def alpaca_fields(row: dict) -> dict[str, str]:
    """Alpaca (instruction/input/output), Dolly (…/context/response), GPTeacher (…/input/response)."""
    return {"prompt": "instruction", "input": "input", "context": "context",
            "response": "output" if "output" in row else "response"}


def lookup(row: dict, path: str, required: bool = True) -> Any:
    """``row[path]``, or a dotted path into nested objects/lists (``instances.0.output``)."""
    if path in row:
        return row[path]
    value: Any = row
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        elif required:
            raise RowProblem("missing_field", f"field '{path}' missing")
        else:
            return None
    return value


def text_field(row: dict, path: str | None, required: bool = True) -> str:
    """A text value; numbers are written out, null/missing optional fields read as ""."""
    value = lookup(row, path, required) if path else None
    if value is None:
        if required:
            raise RowProblem("wrong_type", f"field '{path}' is null, expected text")
        return ""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise RowProblem("wrong_type", f"field '{path}' is {_type_name(value)}, expected text")
    return value


def single_turn(row: dict, fields: dict[str, str], join: str) -> list[dict]:
    """prompt (+ join + input/context when non-empty) -> user; response -> assistant; system if set."""
    prompt = text_field(row, fields["prompt"])
    response = text_field(row, fields["response"])
    for key, value in (("prompt", prompt), ("response", response)):
        if not value.strip():
            raise RowProblem("empty_field", f"field '{fields[key]}' is empty")
    extras = [text_field(row, fields.get(k), required=False) for k in ("input", "context")]
    user = join.join([prompt.strip()] + [e.strip() for e in extras if e.strip()])
    return with_system(row, fields, [{"role": "user", "content": user},
                                     {"role": "assistant", "content": response}])


def with_system(row: dict, fields: dict[str, str], turns: list[dict]) -> list[dict]:
    """Prepend the ``system`` text field, when configured and non-empty."""
    system = text_field(row, fields.get("system"), required=False)
    return ([{"role": "system", "content": system}] if system.strip() else []) + turns


def message_items(row: dict, path: str) -> Iterator[tuple[str, dict]]:
    """(where, message) for each message of the non-empty list at ``path``, checked to be an object as it
    is reached (so a row's first problem is the one reported)."""
    value = lookup(row, path)
    if not isinstance(value, list):
        raise RowProblem("wrong_type", f"field '{path}' is {_type_name(value)}, expected a list")
    if not value:
        raise RowProblem("empty_conversation", f"field '{path}' is an empty list")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise RowProblem("wrong_type", f"{path}[{i}] is {_type_name(item)}, expected an object")
        yield f"{path}[{i}]", item


def messages_turns(row: dict, fields: dict[str, str]) -> list[dict]:
    """OpenAI-style ``[{"role", "content"}, ...]``."""
    path = fields.get("messages", "messages")
    turns = []
    for where, item in message_items(row, path):
        role = item.get("role")
        if role not in ROLES:
            raise RowProblem("unknown_role", f"{where}.role is {role!r}; expected one of {', '.join(ROLES)}")
        turns.append({"role": role, "content": item_text(item, "content", where)})
    return with_system(row, fields, turns)


def sharegpt_turns(row: dict, fields: dict[str, str], role_map: dict[str, str]) -> list[dict]:
    """ShareGPT ``[{"from", "value"}, ...]`` with ``from`` mapped to roles through ``role_map``."""
    path = fields.get("conversations", "conversations")
    turns = []
    for where, item in message_items(row, path):
        speaker = item.get("from")
        role = (role_map.get(speaker) or role_map.get(speaker.lower())) if isinstance(speaker, str) else None
        if role is None:
            raise RowProblem("unknown_role", f"{where}.from is {speaker!r}; add it to role_map")
        turns.append({"role": role, "content": item_text(item, "value", where)})
    return with_system(row, fields, turns)


def item_text(item: dict, key: str, where: str) -> str:
    """The text of one message of a list; strict: no numbers, no null."""
    if key not in item:
        raise RowProblem("missing_field", f"field '{where}.{key}' missing")
    if not isinstance(item[key], str):
        raise RowProblem("wrong_type", f"field '{where}.{key}' is {_type_name(item[key])}, expected text")
    return item[key]


def _type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def transcript_turns(row: dict, fields: dict[str, str]) -> list[dict]:
    """Plain ``Human:``/``Assistant:`` (or ``User:``/``AI:``, ``System:``) text, as in Anthropic HH."""
    text = text_field(row, fields.get("text", "text"))
    turns = split_turns(text, _TRANSCRIPT_SPEAKERS)
    if not turns:
        raise RowProblem("no_conversation_found", "no Human:/Assistant: marker at a line start")
    return turns


def normalize(turns: list[dict]) -> tuple[dict, ...]:
    """Apply the contract in the module docstring; raise RowProblem when no conversation is left."""
    merged: list[dict] = []
    for turn in turns:
        content = turn["content"].strip()
        if _SURROGATE.search(content):
            raise RowProblem("invalid_utf8", "text holds an unpaired surrogate (a \\ud800-\\udfff escape); "
                                             "it is not valid Unicode")
        if not content:
            continue
        if turn["role"] == "system" and any(m["role"] != "system" for m in merged):
            raise RowProblem("misplaced_system", "a system message comes after the conversation started")
        if merged and merged[-1]["role"] == turn["role"]:
            merged[-1] = {"role": turn["role"], "content": merged[-1]["content"] + "\n\n" + content}
        else:
            merged.append({"role": turn["role"], "content": content})
    if not merged:
        raise RowProblem("empty_conversation", "no message with text")
    head = merged[:1] if merged[0]["role"] == "system" else []
    body = merged[len(head):]
    while body and body[0]["role"] == "assistant":
        body.pop(0)
    while body and body[-1]["role"] == "user":
        body.pop()
    if not body:
        raise RowProblem("no_assistant_turn", "no assistant message answers a user message")
    return tuple(head + body)


@dataclass(frozen=True)
class OasstMessage:
    """What a thread needs of one OpenAssistant message row (the rest of the row is not kept)."""

    id: str
    parent: str | None
    role: str
    text: str
    rank: int | None
    created: str
    deleted: bool
    origin: str


def oasst_conversations(rows: Iterable[Row | BadRow], source: str) -> Iterator[Conversation | Skip]:
    """One conversation per OpenAssistant message tree, following the best-ranked reply at every level.

    Flat oasst rows (``message_id``, ``parent_id``, ``role`` prompter|assistant, ``rank``, ``deleted``)
    only make threads once the whole tree is known, so the messages are held in memory (about the size
    of the texts). Deleted messages are never followed. The origin is the root prompt's row.
    """
    messages: dict[str, OasstMessage] = {}
    for row in rows:
        if isinstance(row, BadRow):
            yield Skip(source, row.origin, row.reason, row.detail)
            continue
        try:
            message = oasst_message(row)
        except RowProblem as problem:
            yield Skip(source, row.origin, problem.reason, problem.detail)
            continue
        messages[message.id] = message
    children: dict[str, list[OasstMessage]] = defaultdict(list)
    for message in messages.values():
        if message.parent is not None:
            children[message.parent].append(message)
    for message in messages.values():  # dicts keep file order, so roots come out in file order
        if message.parent is None:
            yield oasst_thread(message, children, source)
        elif message.parent not in messages:
            yield Skip(source, message.origin, "orphan_message",
                       f"parent {message.parent} is not in the data; its replies are left out")


def oasst_message(row: Row) -> OasstMessage:
    """The fields of one oasst row that threads need; a bad row raises RowProblem."""
    data = row.data
    if not isinstance(data, dict):
        raise RowProblem("wrong_type", f"row is {_type_name(data)}, expected an object")
    for key in ("message_id", "role", "text"):
        if key not in data:
            raise RowProblem("missing_field", f"field '{key}' missing")
    if not isinstance(data["role"], str) or data["role"] not in OASST_ROLES:
        raise RowProblem("unknown_role", f"role is {data['role']!r}; expected prompter or assistant")
    ids = {key: data.get(key) for key in ("message_id", "parent_id")}
    bad = {key: _type_name(v) for key, v in ids.items() if not isinstance(v, (str, int, type(None)))
           or isinstance(v, bool) or (key == "message_id" and v is None)}
    if bad:
        raise RowProblem("wrong_type", ", ".join(f"field '{k}' is {t}, expected text" for k, t in bad.items()))
    parent = None if ids["parent_id"] is None else str(ids["parent_id"])
    rank = data.get("rank")
    return OasstMessage(str(data["message_id"]), parent, OASST_ROLES[data["role"]],
                        item_text(data, "text", "row"), rank if isinstance(rank, int) else None,
                        str(data.get("created_date") or ""), bool(data.get("deleted")), row.origin)


def oasst_thread(root: OasstMessage, children: dict[str, list[OasstMessage]],
                 source: str) -> Conversation | Skip:
    """Root prompt, then at each level the best-ranked live reply of the other role."""
    if root.deleted:
        return Skip(source, root.origin, "deleted", "the root prompt is marked deleted")
    thread = [root]
    while replies := [m for m in children.get(thread[-1].id, ())
                      if not m.deleted and m.role != thread[-1].role]:
        # rank 0 is best; unranked replies come last, then the oldest, then by id for a stable choice
        thread.append(min(replies, key=lambda m: (m.rank is None, m.rank or 0, m.created, m.id)))
    try:
        turns = normalize([{"role": m.role, "content": m.text} for m in thread])
    except RowProblem as problem:
        return Skip(source, root.origin, problem.reason, problem.detail)
    return Conversation(turns, source, root.origin)
