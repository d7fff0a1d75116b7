"""The messages contract between row layouts (conversations.py) and templates (templates.py), and its parts.

A conversation is a tuple of messages; each is ``{"role", "content"}`` and, where the data has them:

* ``"tool_calls": [{"type": "function", "function": {"name": str, "arguments": {...}}, "id"?: str}, ...]`` on an
  assistant message (OpenAI's shape, arguments always a JSON object); its content may then be ``""``;
* role ``"tool"``: a tool's result (content: the result as text), optionally ``"tool_call_id"``.
* ``"reasoning_content": str`` on an assistant message: its reasoning trace (``utils/data/reasoning.py``).

A conversation may carry ``tools``: the function definitions its rows offer, each held as
``{"type": "function", "function": {...}}``, rendered by the template (never supervised).

``normalize`` checks and shapes every layout's turns the same way: contents stripped; turns with no text and no
call dropped; consecutive turns of one role merged (user text with a blank line between; assistant text and calls
joined in order, a trace only before the turn's text and calls), tool results never merged; leading assistant and tool turns dropped, trailing user and tool
turns dropped; a user turn followed by an assistant turn must remain. A tool result needs a call before it.
Plain conversations come out exactly as ``{"role", "content"}`` dicts, as before tool calls existed.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from utils.data.reasoning import KEY as REASONING
from utils.data.sources import RowProblem

_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON "\ud83d" escapes without their pair decode to these
TOOL_USE_KEYS = ("conversations_with_tools", "tool_calls", "tool_results")
"""What ``part_counts`` counts first, in its order (the data card and the manifest's ``tool_use``); its last
count is the conversation's reasoning traces."""
PART_TYPES = ("text", "reasoning", "tool_call")
"""The ``type`` of a part of LLaMA-Factory's typed content (``[{"type", "value"}, ...]``)."""


@dataclass(frozen=True)
class Conversation:
    """A validated conversation and where it came from."""

    messages: tuple[dict, ...]
    source: str
    """The dataset entry's ``name``."""
    origin: str
    """``file.jsonl:17``, ``file.json[42]``, ``hub:name[split]#42`` or ``dir/file.md``."""
    tools: tuple[dict, ...] = ()
    """The row's function definitions (OpenAI's shape), rendered by the template; empty for most data."""


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


def type_name(value: Any) -> str:
    return "null" if value is None else type(value).__name__


def item_text(item: dict, key: str, where: str) -> str:
    """The text of one message of a list; strict: no numbers, no null."""
    if key not in item:
        raise RowProblem("missing_field", f"field '{where}.{key}' missing")
    if not isinstance(item[key], str):
        raise RowProblem("wrong_type", f"field '{where}.{key}' is {type_name(item[key])}, expected text")
    return item[key]


def parse_json_value(value: Any, where: str, reason: str) -> Any:
    """``value`` itself, or the JSON a string holds; a string that is not JSON is a RowProblem ``reason``."""
    if not isinstance(value, str):
        return value
    try:
        return json.loads(value)
    except (ValueError, RecursionError) as err:
        raise RowProblem(reason, f"{where} is not valid JSON ({str(err).splitlines()[0][:80]})") from None


def tool_call(value: Any, where: str) -> dict:
    """One call as ``{"type": "function", "function": {"name", "arguments"}}`` (+ ``id``) from an OpenAI call,
    a ``{"name", "arguments"}`` object or either as a JSON string; ``arguments`` may be JSON text."""
    value = parse_json_value(value, where, "bad_tool_call")
    if not isinstance(value, dict):
        raise RowProblem("bad_tool_call", f"{where} is {type_name(value)}, expected a tool call object")
    function = value.get("function", value)
    name = function.get("name") if isinstance(function, dict) else None
    if not isinstance(name, str) or not name.strip():
        raise RowProblem("bad_tool_call", f"{where} has no function name")
    if json.dumps(name, ensure_ascii=False)[1:-1] != name:
        raise RowProblem("bad_tool_call", f"{where}: function name {name[:40]!r} holds quotes, backslashes or "
                                          "control characters")
    arguments = parse_json_value(function.get("arguments", {}), f"{where}.arguments", "bad_tool_call")
    if not isinstance(arguments, dict):
        raise RowProblem("bad_tool_call", f"{where}.arguments is {type_name(arguments)}, expected a JSON object")
    call = {"type": "function", "function": {"name": name, "arguments": arguments}}
    if isinstance(value.get("id"), str) and value["id"]:
        call["id"] = value["id"]
    return call


def tool_calls(value: Any, where: str) -> list[dict]:
    """A list of calls, or one call (a ShareGPT ``function_call`` value holds one or a list)."""
    value = parse_json_value(value, where, "bad_tool_call")
    items = value if isinstance(value, list) else [value]
    return [tool_call(item, f"{where}[{k}]" if isinstance(value, list) else where) for k, item in enumerate(items)]


def tools_list(value: Any, where: str) -> tuple[dict, ...]:
    """A row's tool definitions (a list, or JSON text of one; null, "" and [] mean none), each in OpenAI's shape."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return ()
    value = parse_json_value(value, where, "bad_tools")
    if not isinstance(value, list):
        raise RowProblem("bad_tools", f"{where} is {type_name(value)}, expected a list of function definitions")
    out = []
    for k, tool in enumerate(value):
        function = tool.get("function", tool) if isinstance(tool, dict) else None
        if not isinstance(function, dict) or not isinstance(function.get("name"), str) or not function["name"]:
            raise RowProblem("bad_tools", f"{where}[{k}] is not a function definition with a name")
        out.append({"type": "function", "function": function})
    return tuple(out)


def message(role: str, content: str, calls: list | None = None, call_id: str | None = None,
            reasoning: str = "") -> dict:
    """A message of the contract; the optional keys appear only when they hold something."""
    out = {"role": role, "content": content}
    if reasoning:
        out[REASONING] = reasoning
    if calls:
        out["tool_calls"] = list(calls)
    if call_id:
        out["tool_call_id"] = call_id
    return out


def typed_content(parts: list, role: str, where: str) -> tuple[str, str, list[dict]]:
    """(text, trace, calls) of LLaMA-Factory's typed content: text parts joined with a blank line, reasoning
    parts first (assistant only), tool_call parts (each a call's JSON) after the text."""
    texts, traces, calls = [], [], []
    for k, part in enumerate(parts):
        at = f"{where}[{k}]"
        kind = part.get("type") if isinstance(part, dict) else None
        if kind not in PART_TYPES or not isinstance(part.get("value"), str):
            raise RowProblem("wrong_type", f"{at} is not a {{type: {'|'.join(PART_TYPES)}, value: text}} part")
        if kind != "text" and role != "assistant":
            reason = "misplaced_reasoning" if kind == "reasoning" else "misplaced_tool_call"
            raise RowProblem(reason, f"{at}: a {role} turn carries a {kind} part; only assistant turns have them")
        if kind == "reasoning" and (texts or calls):
            raise RowProblem("misplaced_reasoning", f"{at}: a reasoning part after the turn's text or calls")
        if kind == "text" and calls:
            raise RowProblem("misplaced_tool_call", f"{at}: text after the turn's tool call")
        if kind == "tool_call":
            calls.append(tool_call(part["value"], f"{at}.value"))
        else:
            (texts if kind == "text" else traces).append(part["value"].strip())
    return "\n\n".join(t for t in texts if t), "\n\n".join(t for t in traces if t), calls


def _check_text(*texts: str) -> None:
    if any(_SURROGATE.search(t) for t in texts):
        raise RowProblem("invalid_utf8", "text holds an unpaired surrogate (a \\ud800-\\udfff escape); "
                                         "it is not valid Unicode")


def _merge(last: dict, turn: dict) -> dict:
    """Two consecutive turns of one role as one (never tool results)."""
    if last.get("tool_calls") and turn["content"]:
        raise RowProblem("misplaced_tool_call", "an assistant turn goes on after its tool call with no tool result "
                                                "in between")
    if turn.get(REASONING) and (last["content"] or last.get("tool_calls")):
        raise RowProblem("misplaced_reasoning", "a reasoning trace comes after the answer of the same assistant "
                                                "turn (two assistant turns in a row)")
    content = "\n\n".join(t for t in (last["content"], turn["content"]) if t)
    trace = "\n\n".join(t for t in (last.get(REASONING, ""), turn.get(REASONING, "")) if t)
    return message(turn["role"], content, (last.get("tool_calls") or []) + (turn.get("tool_calls") or []),
                   reasoning=trace)


def _shaped(turn: dict) -> dict | None:
    """One turn stripped and checked, or None when it holds nothing."""
    role, content, calls = turn["role"], turn["content"].strip(), turn.get("tool_calls") or []
    trace = turn.get(REASONING, "").strip()
    _check_text(content, trace, json.dumps(calls, ensure_ascii=False) if calls else "")
    if calls and role != "assistant":
        raise RowProblem("misplaced_tool_call", f"a {role} turn carries tool calls; only assistant turns call tools")
    if not content and not calls:  # a trace with no answer after it has nothing to lead to
        return None
    return message(role, content, calls, turn.get("tool_call_id"), trace)


def normalize(turns: list[dict]) -> tuple[dict, ...]:
    """Apply the contract in the module docstring; raise RowProblem when no conversation is left."""
    merged: list[dict] = []
    for raw in turns:
        turn = _shaped(raw)
        if turn is None:
            continue
        role = turn["role"]
        if role == "system" and any(m["role"] != "system" for m in merged):
            raise RowProblem("misplaced_system", "a system message comes after the conversation started")
        if role == "tool" and not (merged and (merged[-1]["role"] == "tool" or merged[-1].get("tool_calls"))):
            raise RowProblem("orphan_tool_result", "a tool result comes with no tool call before it")
        if merged and merged[-1]["role"] == role and role != "tool":
            merged[-1] = _merge(merged[-1], turn)
        else:
            merged.append(turn)
    if not merged:
        raise RowProblem("empty_conversation", "no message with text")
    head = merged[:1] if merged[0]["role"] == "system" else []
    body = merged[len(head):]
    while body and body[0]["role"] in ("assistant", "tool"):
        body.pop(0)
    while body and body[-1]["role"] in ("user", "tool"):
        body.pop()
    if not body:
        raise RowProblem("no_assistant_turn", "no assistant message answers a user message")
    return tuple(head + body)


def part_counts(messages, tools) -> tuple[int, int, int, int]:
    """(1 when the conversation offers tools else 0, its tool calls, its tool results, its reasoning traces)."""
    calls = sum(len(m.get("tool_calls", ())) for m in messages)
    return (int(bool(tools)), calls, sum(m["role"] == "tool" for m in messages),
            sum(bool(m.get(REASONING)) for m in messages))


def is_structured(messages, tools) -> bool:
    """Whether a conversation uses tools (definitions, calls or results): only templates with tools render it."""
    return bool(tools) or any("tool_calls" in m or m["role"] == "tool" for m in messages)
