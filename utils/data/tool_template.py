"""Tool use (and reasoning traces) through a chat template: whether a template renders tools, where a tool-using assistant turn starts,
and the checks that nothing of a call or a definition is lost or turns into a control token.

A conversation with tools, calls or results (``messages.is_structured``) is rendered with ``tools=`` by the
template itself; ``ChatTemplate`` then supervises each assistant turn from the end of what the template writes
before it (the conversation up to that turn rendered with ``add_generation_prompt``) to its end-of-turn token:
text and tool calls train, tool results and tool definitions never do. That is the rule HF's
``return_assistant_tokens_mask`` follows for templates that mark their generations, applied to all of them.
"""
from __future__ import annotations

import json
import re
from typing import Callable, Sequence

Render = Callable[[list, bool, Sequence[dict]], str]
_PROBE = {"tool": "probe_tool_definition_q7", "call": "probe_tool_call_q7", "result": "probe_tool_result_q7"}


class ToolTemplateError(ValueError):
    """A tool-using conversation this template cannot encode faithfully; ``reason`` is its drop reason."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


def renders_tools(render: Render) -> bool:
    """Whether ``render`` writes a tool definition, an assistant's call and a tool's result (a probe)."""
    tools = [{"type": "function", "function": {"name": _PROBE["tool"], "description": "probe",
                                               "parameters": {"type": "object", "properties": {}}}}]
    call = {"type": "function", "function": {"name": _PROBE["call"], "arguments": {}}}
    msgs = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "content": _PROBE["result"]}, {"role": "assistant", "content": "Done"}]
    try:
        text = render(msgs, False, tools)
    except ValueError:
        return False
    return all(word in text for word in _PROBE.values())


def check_tool_text(msgs: Sequence[dict], tools: Sequence[dict], special: re.Pattern) -> None:
    """Tool calls and definitions are template text, so a special-token string in them would become a control
    token: such a conversation is refused (contents are safe: they are encoded as plain text)."""
    blob = json.dumps([list(tools), [m.get("tool_calls", []) for m in msgs]], ensure_ascii=False)
    if special.search(blob):
        raise ToolTemplateError("special_token_in_tool_data", "a tool call or tool definition holds a "
                                                              "special-token string")


def turn_start(render: Render, msgs: list[dict], i: int, text: str, tools: Sequence[dict]) -> int:
    """Character where assistant message ``i``'s own text begins: the end of the conversation before it
    rendered with the generation prompt. A template that shows earlier turns' reasoning only while no user
    message follows them (Qwen3's) renders them without it in the whole conversation: that prefix is tried too."""
    prefix = render(msgs[:i], True, tools)
    if not text.startswith(prefix):
        untraced = [{k: v for k, v in m.items() if k != "reasoning_content"} for m in msgs[:i]]
        prefix = render(untraced, True, tools)
    if not text.startswith(prefix):
        raise ToolTemplateError("template_error", f"the chat template renders the turns before message {i} "
                                                  "differently once it follows")
    return len(prefix)


def check_rendered(msgs: Sequence[dict], tools: Sequence[dict], text: str, spans: dict[int, tuple[int, int]]) -> None:
    """Every call's function name is inside its assistant turn's span and every tool's name in the text."""
    for i, (start, end) in spans.items():
        for call in msgs[i].get("tool_calls", ()):
            if call["function"]["name"] not in text[start:end]:
                raise ToolTemplateError("tool_call_not_rendered", f"the chat template left out the tool call "
                                                                  f"{call['function']['name']!r} of message {i}")
    for tool in tools:
        if tool["function"]["name"] not in text:
            raise ToolTemplateError("tools_not_rendered", f"the chat template left out the tool definition "
                                                          f"{tool['function']['name']!r}")
