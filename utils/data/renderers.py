"""The project's own chat templates as plain functions: messages -> text (``ChatTemplate`` masks and tokenizes it)."""
from __future__ import annotations

import json
from typing import Sequence

from utils.data.tokenizer import IM_END, IM_START, TOOLS_HEADER

Message = dict  # {"role": "system" | "user" | "assistant" | "tool", "content": str, "tool_calls"?: [...]}
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")


def answer(m: Message) -> str:
    """An assistant turn's text as the project's templates write it: its reasoning trace first, as
    ``<think>\n{trace}\n</think>\n``, then the content."""
    trace = m.get("reasoning_content")
    return f"<think>\n{trace}\n</think>\n{m['content']}" if trace else m["content"]


def _split_system(msgs: list[Message]) -> tuple[str, list[Message]]:
    if msgs and msgs[0]["role"] == "system":
        return msgs[0]["content"], msgs[1:]
    return "", msgs


def render_chatml(msgs: list[Message], add_generation_prompt: bool, tools: Sequence[dict] = ()) -> str:
    """Same text as utils.data.tokenizer.CHATML_TEMPLATE: tools close the system turn (after the system text),
    each call is ``<tool_call>{"name", "arguments"}</tool_call>`` after the assistant's text, results are
    ``tool`` turns."""
    head = ""
    if tools:
        system, msgs = _split_system(msgs)
        definitions = "".join("\n" + json.dumps(t, ensure_ascii=False) for t in tools)
        head = f"{IM_START}system\n{system + chr(10) * 2 if system else ''}{TOOLS_HEADER}{definitions}{IM_END}\n"
    out = "".join(f"{IM_START}{m['role']}\n{answer(m)}{_calls(m)}{IM_END}\n" for m in msgs)
    return head + out + (f"{IM_START}assistant\n" if add_generation_prompt else "")


def _calls(m: Message) -> str:
    """An assistant turn's tool calls as the project's tool format writes them after its text."""
    calls = [json.dumps({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}, ensure_ascii=False)
             for c in m.get("tool_calls", ())]
    return "".join(("\n" if m["content"] or k else "") + f"<tool_call>{c}</tool_call>" for k, c in enumerate(calls))


def render_instruct(msgs: list[Message], eos: str, preamble: str = "") -> str:
    """``### Instruction:`` / ``### Response:`` blocks; a system message (else ``preamble``) comes first."""
    system, turns = _split_system(msgs)
    head = system or preamble
    out = [f"{head}\n\n"] if head else []
    return "".join(out + _turns(turns, "### Instruction:\n{}\n\n### Response:\n", "{}", eos, after_reply="\n\n"))


def render_chat(msgs: list[Message], eos: str) -> str:
    """``System: ...`` first, then ``Human: ...`` / ``Assistant: ...`` lines (the SFT guide's Chat format); eos
    closes each reply."""
    system, turns = _split_system(msgs)
    out = [f"System: {system}\n"] if system else []
    return "".join(out + _turns(turns, "Human: {}\nAssistant:", " {}", eos, after_reply="\n"))


def _turns(turns: list[Message], user: str, reply: str, eos: str, after_reply: str) -> list[str]:
    """Each turn through its pattern (``{}``: the content), eos after each reply; a user turn after a reply
    starts with ``after_reply``."""
    out = []
    for prev, m in zip([None] + turns, turns):
        if m["role"] == "user":
            sep = after_reply if prev is not None and prev["role"] == "assistant" else ""
            out.append(sep + user.format(m["content"]))
        else:
            out.append(reply.format(answer(m)) + eos)
    return out
