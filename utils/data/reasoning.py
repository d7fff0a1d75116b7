"""Reasoning traces: where a row holds them, what a dataset's ``reasoning`` setting does with them, and how a
chat template shows them.

A trace is an assistant message's ``reasoning_content`` (HF's key, the one reasoning templates such as Qwen3's
read). It comes from a key on the message (``reasoning_content`` unless ``text_fields.reasoning`` names
another), from a ``<think>...</think>`` block at the start of the assistant's content, or from the
``reasoning`` parts of LLaMA-Factory's typed content. The dataset setting ``reasoning`` decides:

* ``train`` (the default): the trace is rendered the way the template renders it and supervised with the
  rest of its assistant turn, from the end of the template's text before the turn to its end-of-turn token;
* ``keep_context``: rendered the same way, not supervised: the turn trains from the end of its trace (and the
  ``</think>`` and whitespace the template writes after it);
* ``drop``: removed before rendering.

A template that renders no ``reasoning_content`` (SmolLM2's, Qwen2.5's) cannot train or keep a trace: with
``train`` or ``keep_context`` such a conversation stops the stage in one line instead of losing its traces
silently. Templates that leave out the traces of earlier turns (Qwen3's, before the last user message) render
what they render; those traces are in no token and train nothing.
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

from utils.data.dataset_entry import REASONING_MODES as MODES
from utils.data.sources import RowProblem

KEY = "reasoning_content"
"""The key of a trace on a message of the messages contract (and HF's, read by reasoning templates)."""
OPEN, CLOSE = "<think>", "</think>"
_PROBE = "probe_reasoning_q7"
_AFTER_TRACE = re.compile(r"\s*</think>\s*")


def split_think(content: str, where: str) -> tuple[str, str]:
    """(trace, answer) of an assistant content that starts with ``<think>``; ("", content) when it does not."""
    stripped = content.lstrip()
    if not stripped.startswith(OPEN):
        return "", content
    end = stripped.find(CLOSE)
    if end < 0:
        raise RowProblem("unclosed_think", f"{where} opens {OPEN} and never closes it")
    return stripped[len(OPEN):end], stripped[end + len(CLOSE):]


def turn_reasoning(item: dict, role: str, key: str, content: str, where: str, parts: str = "") -> tuple[str, str]:
    """(trace, content) of one message: its ``key`` field, a leading ``<think>`` block or its typed reasoning
    ``parts`` (assistant turns only; one of them at most)."""
    value = item.get(key)
    if value is not None and not isinstance(value, str):
        raise RowProblem("bad_reasoning", f"{where}.{key} is {type(value).__name__}, expected text")
    if role != "assistant":
        if value and value.strip():
            raise RowProblem("misplaced_reasoning", f"{where}.{key}: a {role} turn carries a reasoning trace; "
                                                    "only assistant turns reason")
        return "", content
    think, content = split_think(content, where)
    traces = [t for t in (value or "", think, parts) if t.strip()]
    if len(traces) > 1:
        raise RowProblem("bad_reasoning", f"{where} holds two reasoning traces (a {key} field, a {OPEN} block "
                                          "or reasoning parts)")
    return (traces[0] if traces else ""), content


def trace_of(message: dict) -> str:
    return message.get(KEY, "")


def apply_mode(messages: Sequence[dict], mode: str) -> list[dict]:
    """The messages a template renders: copies, without traces when ``mode`` is drop."""
    if mode not in MODES:
        raise ValueError(f"reasoning: unknown mode {mode!r}; use one of {', '.join(MODES)}")
    if mode == "drop":
        return [{k: v for k, v in m.items() if k != KEY} for m in messages]
    return [dict(m) for m in messages]


def renders_reasoning(render: Callable[[list, bool, Sequence[dict]], str]) -> bool:
    """Whether ``render`` writes the trace of a conversation's (last) assistant turn (a probe)."""
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Done", KEY: _PROBE}]
    try:
        return _PROBE in render(msgs, False, ())
    except ValueError:
        return False


def context_end(text: str, trace_end: int) -> int:
    """Where supervision starts in a keep_context turn: after the trace and the ``</think>`` (with the
    whitespace around it) that the template writes right after it."""
    after = _AFTER_TRACE.match(text, trace_end)
    return after.end() if after else trace_end


def has_traces(messages: Sequence[dict]) -> bool:
    return any(m.get(KEY) for m in messages)

