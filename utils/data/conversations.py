"""Row -> conversation: one small function per row layout, one contract for what comes out.

The contract (``utils/data/messages.py``, checked by its ``normalize`` for every layout): a conversation is a
tuple of messages ``{"role": "system"|"user"|"assistant"|"tool", "content": str}`` (assistant turns may carry
``tool_calls``): at most one system message, first; then turns that alternate user, assistant (with tool results
after a call), ..., starting with user and ending with assistant. To get there, every layout is normalised the
same way:

* whitespace-only turns are dropped; consecutive turns of one role are merged with a blank line between
  (ShareGPT and markdown exports have them);
* leading assistant turns are dropped (a greeting before any question has nothing to answer);
* a trailing user turn is dropped (there is no answer to learn);
* what is left must hold a user turn followed by an assistant turn, else the row is a Skip.

Tool use: OpenAI ``messages`` rows (``tool_calls``, role ``tool``) and ShareGPT rows with ``function_call`` /
``observation`` turns (LLaMA-Factory's and Glaive's layout; other names through role_map ``tool_call`` / ``tool``)
become the same messages; a row's ``tools`` field (a list or JSON text of one) goes with its conversation.
Reasoning traces (``utils/data/reasoning.py``): a message's ``reasoning_content`` (or ``text_fields.reasoning``),
a leading ``<think>...</think>`` block of an assistant content, or LLaMA-Factory's typed content (``content`` as
``[{"type": "text"|"reasoning"|"tool_call", "value"}, ...]``) become an assistant message's ``reasoning_content``.

A row that cannot become a conversation is a ``Skip`` with a short stable ``reason`` and its origin, never
an exception; only config problems raise UserError. Skip reasons: invalid_json, invalid_utf8, nul_byte,
wrong_type, missing_field, empty_field, empty_conversation, unknown_role, misplaced_system,
no_assistant_turn, unknown_format, orphan_message, deleted, no_conversation_found, single_role,
unclosed_code_fence, bad_tool_call, bad_tools, misplaced_tool_call, orphan_tool_result, bad_reasoning,
misplaced_reasoning, unclosed_think.
"""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Iterator

from utils.data.dataset_entry import MESSAGE_ROLES, DatasetSpec, layout_for_fields
from utils.data.markdown_transcripts import compile_speakers, markdown_turns, split_turns
from utils.data.messages import (Conversation, RawText, Skip, item_text, message, normalize, tool_calls, tools_list,
                                 type_name, typed_content)
from utils.data.oasst import oasst_conversations
from utils.data.reasoning import KEY as REASONING, turn_reasoning
from utils.data.sources import BadRow, Row, RowProblem, iter_rows, resolve_files

DEFAULT_ROLE_MAP = {"human": "user", "user": "user", "gpt": "assistant", "chatgpt": "assistant",
                    "bing": "assistant", "bard": "assistant", "assistant": "assistant",
                    "model": "assistant", "system": "system", "function_call": "tool_call",
                    "observation": "tool", "tool": "tool"}
TRANSCRIPT_MARKERS = {"user": ["Human:", "User:"], "assistant": ["Assistant:", "AI:"], "system": ["System:"]}
_TRANSCRIPT_SPEAKERS = compile_speakers(TRANSCRIPT_MARKERS, use_regex=False, case_sensitive=True)


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


def to_conversation(row: Row | BadRow, to_turns: Callable[[dict], tuple[list[dict], tuple]],
                    source: str) -> Conversation | Skip:
    """Apply a layout and the contract to one row; every problem becomes a Skip at the row's origin."""
    if isinstance(row, BadRow):
        return Skip(source, row.origin, row.reason, row.detail)
    try:
        if not isinstance(row.data, dict):
            raise RowProblem("wrong_type", f"row is {type_name(row.data)}, expected an object")
        turns, tools = to_turns(row.data)
        return Conversation(normalize(turns), source, row.origin, tools)
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


def row_converter(spec: DatasetSpec) -> Callable[[dict], tuple[list[dict], tuple]]:
    """The row -> (turns, tools) function for a (non-oasst) entry; markers and regexes are compiled once here.
    Only the messages and sharegpt layouts carry tools."""
    if spec.type == "markdown_transcripts":
        speakers = compile_speakers(vars(spec.participants), use_regex=spec.use_regex,
                                    case_sensitive=spec.case_sensitive, ignore_lines=spec.ignore_lines,
                                    where=f"dataset '{spec.name}'")
        return lambda row: (markdown_turns(row, speakers), ())
    fields, role_map = spec.text_fields, {**DEFAULT_ROLE_MAP, **spec.role_map}
    layouts = {
        "single_turn": lambda row: (single_turn(row, fields or alpaca_fields(row), spec.input_join), ()),
        "messages": lambda row: (messages_turns(row, fields), row_tools(row, fields)),
        "sharegpt": lambda row: (sharegpt_turns(row, fields, role_map), row_tools(row, fields)),
        "transcript": lambda row: (transcript_turns(row, fields), ()),
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
        raise RowProblem("wrong_type", f"field '{path}' is {type_name(value)}, expected text")
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
        raise RowProblem("wrong_type", f"field '{path}' is {type_name(value)}, expected a list")
    if not value:
        raise RowProblem("empty_conversation", f"field '{path}' is an empty list")
    for i, item in enumerate(value):
        if not isinstance(item, dict):
            raise RowProblem("wrong_type", f"{path}[{i}] is {type_name(item)}, expected an object")
        yield f"{path}[{i}]", item


def messages_turns(row: dict, fields: dict[str, str]) -> list[dict]:
    """OpenAI-style ``[{"role", "content"}, ...]``: assistant ``tool_calls`` (content may then be null),
    ``tool`` results (``tool_call_id`` kept), traces (``reasoning_content`` or ``<think>``); a content may be
    LLaMA-Factory's typed parts."""
    path, reasoning = fields.get("messages", "messages"), fields.get("reasoning", REASONING)
    turns = []
    for where, item in message_items(row, path):
        role = item.get("role")
        if role not in MESSAGE_ROLES:
            raise RowProblem("unknown_role", f"{where}.role is {role!r}; expected one of {', '.join(MESSAGE_ROLES)}")
        calls = tool_calls(item["tool_calls"], f"{where}.tool_calls") if item.get("tool_calls") else []
        if isinstance(item.get("content"), list):  # LLaMA-Factory's typed parts
            content, parts_trace, more = typed_content(item["content"], role, f"{where}.content")
            calls += more
        else:
            content = "" if calls and item.get("content") is None else item_text(item, "content", where)
            parts_trace = ""
        trace, content = turn_reasoning(item, role, reasoning, content, where, parts_trace)
        call_id = item.get("tool_call_id") if role == "tool" and isinstance(item.get("tool_call_id"), str) else None
        turns.append(message(role, content, calls, call_id, trace))
    return with_system(row, fields, turns)


def sharegpt_turns(row: dict, fields: dict[str, str], role_map: dict[str, str]) -> list[dict]:
    """ShareGPT ``[{"from", "value"}, ...]`` with ``from`` mapped to roles through ``role_map``; a ``tool_call``
    speaker (``function_call`` by default) is an assistant turn whose value is the call's JSON."""
    path, reasoning = fields.get("conversations", "conversations"), fields.get("reasoning", REASONING)
    turns = []
    for where, item in message_items(row, path):
        speaker = item.get("from")
        role = (role_map.get(speaker) or role_map.get(speaker.lower())) if isinstance(speaker, str) else None
        if role is None:
            raise RowProblem("unknown_role", f"{where}.from is {speaker!r}; add it to role_map")
        value = item_text(item, "value", where)
        if role == "tool_call":
            turns.append(message("assistant", "", tool_calls(value, f"{where}.value")))
        else:
            trace, value = turn_reasoning(item, role, reasoning, value, where)
            turns.append(message(role, value, reasoning=trace))
    return with_system(row, fields, turns)


def row_tools(row: dict, fields: dict[str, str]) -> tuple[dict, ...]:
    """The row's function definitions: the ``tools`` field (JSON text or a list; absent, null or "" is none)."""
    path = fields.get("tools", "tools")
    return tools_list(lookup(row, path, required=False), f"field '{path}'")


def transcript_turns(row: dict, fields: dict[str, str]) -> list[dict]:
    """Plain ``Human:``/``Assistant:`` (or ``User:``/``AI:``, ``System:``) text, as in Anthropic HH."""
    text = text_field(row, fields.get("text", "text"))
    turns = split_turns(text, _TRANSCRIPT_SPEAKERS)
    if not turns:
        raise RowProblem("no_conversation_found", "no Human:/Assistant: marker at a line start")
    return turns
