"""The project's own chat templates as plain functions: messages -> text (``ChatTemplate`` masks and tokenizes it)."""
from __future__ import annotations

from utils.data.tokenizer import IM_END, IM_START

Message = dict  # {"role": "system" | "user" | "assistant", "content": str}
ALPACA_PREAMBLE = ("Below is an instruction that describes a task. "
                   "Write a response that appropriately completes the request.")


def _split_system(msgs: list[Message]) -> tuple[str, list[Message]]:
    if msgs and msgs[0]["role"] == "system":
        return msgs[0]["content"], msgs[1:]
    return "", msgs


def render_chatml(msgs: list[Message], add_generation_prompt: bool) -> str:
    """Same text as utils.data.tokenizer.CHATML_TEMPLATE."""
    out = "".join(f"{IM_START}{m['role']}\n{m['content']}{IM_END}\n" for m in msgs)
    return out + (f"{IM_START}assistant\n" if add_generation_prompt else "")


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
            out.append(reply.format(m["content"]) + eos)
    return out
