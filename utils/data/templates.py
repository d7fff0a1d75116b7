"""Chat templates and loss masks: messages -> input_ids + labels, with data text that stays plain text.

Every template takes the same path, so masks never come from diffing the lengths of separately
tokenized fragments:

1. Render the conversation with each message content replaced by a sentinel character (Unicode
   private use, one per message). Our own templates (chatml, instruct, chat, alpaca) are small Python
   functions (``utils/data/renderers.py``); ``tokenizer`` renders with the tokenizer's own
   ``chat_template`` (``tokenize=False``).
2. Split the rendered text at the tokenizer's special-token strings. Only the template can put them
   there, so each becomes its id directly.
3. Put the real contents back in place of the sentinels and tokenize every maximal run of text between
   two special tokens in one call, with special-token matching off: a ``<|im_start|>`` or ``</s>`` typed
   in the data stays plain text, and words keep their in-context tokenization.
4. A token is supervised when its character span overlaps an assistant turn's content or the template
   text after it up to and including its end-of-turn token. Labels come from positions, never from
   comparing ids, so an end-of-turn id that equals the pad id is still trained.

For clean text (no special-token strings in the data) the ids equal
``tokenizer(rendered, add_special_tokens=False)``: runs after a special token are tokenized behind an
anchor token so that they are "not at the start of the string", exactly as in the full string (a
Metaspace ``prepend_scheme: first`` tokenizer adds its leading ``▁`` only at offset 0).
"""
from __future__ import annotations

import bisect
import json
import re
from dataclasses import dataclass
from itertools import chain
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from utils.common.errors import UserError
from utils.common.labels import IGNORE
from utils.data.families import FAMILY_NAMES, detect_family
from utils.data.messages import is_structured
from utils.data.reasoning import KEY as TRACE, apply_mode, context_end, has_traces, renders_reasoning
from utils.data.renderers import ALPACA_PREAMBLE, Message, render_chat, render_chatml, render_instruct
from utils.data.tool_template import ToolTemplateError, check_rendered, check_tool_text, renders_tools, turn_start
from utils.data.tokenizer import ANCHOR, IM_END, IM_START, plain_backend, special_token_ids, whole_backend

TEMPLATES = ("chatml", "instruct", "chat", "alpaca", "tokenizer")
TRAIN_ON = ("all_assistant_turns", "last_assistant_turn")
FIXED_DATE = "26 Jul 2024"
"""Llama 3.x templates print today's date unless given one; a fixed date keeps shards reproducible."""
_SENTINEL0 = 0xF0000  # Supplementary Private Use Area-A: never produced by a template
_SENTINEL_RE = re.compile("[\U000F0000-\U000FFFFC]")
_TRACE = 0x8000
"""Sentinel ``_SENTINEL0 + _TRACE + i`` stands for message i's reasoning trace (``contents`` key ``_TRACE + i``)."""
MAX_MESSAGES = 0xFFFFC - _SENTINEL0 - _TRACE + 1
"""The most messages a conversation may have: every trace sentinel stays inside ``_SENTINEL_RE``."""
FOLD_NOTE = "system prompt folded into the first user turn ({family} template has no system role)"


@dataclass(frozen=True)
class EncodedConversation:
    """Token ids and labels of one conversation (labels are -100 or the id itself; not shifted)."""

    input_ids: list[int]
    labels: list[int]
    turn_ends: tuple[int, ...]
    """Token index just past each assistant turn's end-of-turn token, in message order."""
    num_supervised: int
    traces: int = 0
    """Reasoning traces in the ids (a template may leave out those of earlier turns)."""


@dataclass(frozen=True)
class _Tokens:
    """A rendered conversation as tokens with character spans into ``text``."""

    text: str
    ids: list[int]
    spans: np.ndarray
    """(tokens, 2) character start and end of every token."""
    contents: dict[int, tuple[int, int]]
    """Message index -> character span of its content in ``text``; ``_TRACE + i``: message i's trace, when
    the template renders it."""
    specials: list[tuple[int, int]]
    """(character start, token index) of every special token, in order."""


class ChatTemplate:
    """Renders and encodes conversations for one tokenizer; build with ``get_template``."""

    def __init__(self, name: str, tokenizer, render: Callable[[list[Message], bool, Sequence[dict]], str],
                 end_of_turn: Sequence[str], family: str = "", notes: Sequence[str] = (),
                 fold_system: bool = False, verify: bool = False, tools: bool = False, traces: bool = True) -> None:
        self.name, self.tokenizer, self.family = name, tokenizer, family or name
        self.renders_tools, self.renders_reasoning = tools, traces
        """Whether the template renders tools, calls and results / reasoning traces (probed); else such
        conversations fail (a trace is only dropped by the dataset's ``reasoning: drop``)."""
        self._verify = verify
        """Re-render the real text and compare: catches templates that edit contents (trim, escape)."""
        self.notes = list(notes)
        self._render, self._fold_system = render, fold_system
        self._special = special_token_ids(tokenizer)
        self._split = re.compile("(" + "|".join(
            re.escape(t) for t in sorted(self._special, key=len, reverse=True)) + ")")
        self._plain, self._anchor_id = plain_backend(tokenizer)
        added = {t.content: t for t in tokenizer.added_tokens_decoder.values()}
        self._strip = {t: (bool(getattr(added.get(t), "lstrip", False)), bool(getattr(added.get(t), "rstrip", False)))
                       for t in self._special}
        """Special token -> (lstrip, rstrip): whether it takes the whitespace before / after it (Phi-3's do)."""
        self._whole = None if any(any(v) for v in self._strip.values()) else whole_backend(tokenizer)
        """One encode call per clean conversation (``_tokenize_whole``); not for tokens that strip whitespace."""
        self._unsafe = re.compile("|".join(re.escape(t) for t in [*self._special, ANCHOR]))
        self.end_of_turn_ids = [self._special[t] for t in end_of_turn]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        self.stop_token_ids = list(dict.fromkeys(self.end_of_turn_ids + eos))
        """End-of-turn ids then eos: generation stops at any of them."""
    # ------------------------------------------------------------------ public API
    def encode(self, messages: Sequence[Message], train_on: str = "all_assistant_turns",
               tools: Sequence[dict] = (), reasoning: str = "train") -> EncodedConversation:
        """Ids and labels (traces as ``reasoning`` says); raises ValueError when the template cannot render
        this conversation."""
        tokens, supervised, turn_ends = self._encode(self._prepare(messages, reasoning), train_on, tools, reasoning)
        starts, ends = tokens.spans[:, 0], np.maximum(tokens.spans[:, 1], tokens.spans[:, 0] + 1)
        mask = np.zeros(len(tokens.ids), dtype=bool)
        for s, e in supervised:
            mask |= (starts < e) & (ends > s)
        labels = np.where(mask, np.asarray(tokens.ids, dtype=np.int64), IGNORE).tolist()
        traces = sum(k >= _TRACE for k in tokens.contents)
        return EncodedConversation(tokens.ids, labels, turn_ends, int(mask.sum()), traces)

    def encode_prompt(self, messages: Sequence[Message], tools: Sequence[dict] = (),
                      reasoning: str = "train") -> list[int]:
        """The conversation without its final assistant turn, plus the assistant header: generation input."""
        msgs = self._prepare(messages, reasoning)
        if msgs and msgs[-1]["role"] == "assistant":
            msgs = msgs[:-1]
        return self._tokenize(msgs, True, tools).ids

    def render(self, messages: Sequence[Message], tools: Sequence[dict] = (), reasoning: str = "train") -> str:
        """The conversation as the model sees it (text of the tokens ``encode`` returns)."""
        return self._tokenize(self._prepare(messages, reasoning), False, tools).text

    def mark_supervised(self, messages: Sequence[Message], train_on: str = "all_assistant_turns",
                        marks: tuple[str, str] = ("[[", "]]"), tools: Sequence[dict] = (),
                        reasoning: str = "train") -> str:
        """``render`` with every run of supervised tokens wrapped in ``marks`` (for the data card)."""
        encoded = self.encode(messages, train_on, tools, reasoning)
        tokens = self._tokenize(self._prepare(messages, reasoning), False, tools)
        out, pos, k = [], 0, 0
        while k < len(tokens.ids):
            if encoded.labels[k] == IGNORE:
                k += 1
                continue
            start = k
            while k < len(tokens.ids) and encoded.labels[k] != IGNORE:
                k += 1
            a, b = tokens.spans[start][0], tokens.spans[k - 1][1]
            out += [tokens.text[pos:a], marks[0], tokens.text[a:b], marks[1]]
            pos = b
        return "".join(out + [tokens.text[pos:]])

    # ------------------------------------------------------------------ internals
    def _prepare(self, messages: Sequence[Message], reasoning: str) -> list[Message]:
        keys = ("role", "content", TRACE, "tool_calls", "tool_call_id")
        msgs = [{k: m[k] for k in keys if k in m} for m in apply_mode(messages, reasoning)]
        if self._fold_system and len(msgs) > 1 and msgs[0]["role"] == "system":
            system = msgs.pop(0)["content"]
            msgs[0]["content"] = f"{system}\n\n{msgs[0]['content']}"
        return msgs

    def _encode(self, msgs: list[Message], train_on: str, tools: Sequence[dict], reasoning: str):
        if train_on not in TRAIN_ON:
            raise UserError(f"train_on: unknown value '{train_on}'; use one of {', '.join(TRAIN_ON)}")
        tokens = self._tokenize(msgs, False, tools)
        structured, eot = is_structured(msgs, tools), set(self.end_of_turn_ids)
        whole_turns = structured or has_traces(msgs)
        turns, spans = [], {}  # (turn start, end of its end-of-turn token, token index past it)
        for i, m in enumerate(msgs):
            if m["role"] != "assistant":
                continue
            # tools or traces: from where the template's text before the turn ends (a call may be all it holds)
            start, end = (turn_start(self._render, msgs, i, tokens.text, tools),) * 2 if whole_turns \
                else tokens.contents[i]
            if reasoning == "keep_context" and _TRACE + i in tokens.contents:  # the trace is context
                start = context_end(tokens.text, tokens.contents[_TRACE + i][1])
            k = bisect.bisect_left(tokens.specials, (end, -1))
            while k < len(tokens.specials) and tokens.ids[tokens.specials[k][1]] not in eot:
                k += 1
            if k == len(tokens.specials):
                raise ValueError(f"no end-of-turn token after assistant message {i}")
            index = tokens.specials[k][1]
            turns.append((start, int(tokens.spans[index, 1]), index + 1))
            spans[i] = turns[-1][:2]
        if structured:
            check_rendered(msgs, tools, tokens.text, spans)
        trained = turns[-1:] if train_on == "last_assistant_turn" else turns
        return tokens, [(s, e) for s, e, _ in trained], tuple(t for _, _, t in turns)

    def _tokenize(self, msgs: list[Message], add_generation_prompt: bool, tools: Sequence[dict] = ()) -> _Tokens:
        if len(msgs) > MAX_MESSAGES:
            raise ValueError(f"more than {MAX_MESSAGES} messages (sentinel characters)")
        structured = is_structured(msgs, tools)
        if has_traces(msgs) and not self.renders_reasoning:
            raise ToolTemplateError("template_without_reasoning", f"the chat_template of "
                                    f"{self.tokenizer.name_or_path} renders no reasoning_content")
        if structured:
            if not self.renders_tools:
                raise ToolTemplateError("template_without_tools", f"the chat_template of {self.tokenizer.name_or_path} "
                                        "renders no tools or tool calls" if self.name == "tokenizer" else
                                        f"template '{self.name}' has no tool format")
            check_tool_text(msgs, tools, self._unsafe)
        # a tool-using turn may have no text (just a call): it gets no sentinel, so templates that test it see ""
        sentinels = [{**m, "content": chr(_SENTINEL0 + i) if m["content"] or not structured else "",
                      **({TRACE: chr(_SENTINEL0 + _TRACE + i)} if m.get(TRACE) else {})} for i, m in enumerate(msgs)]
        expected = sum(bool(m["content"]) for m in sentinels)
        parts = self._split.split(self._render(sentinels, add_generation_prompt, tools))
        if self._whole is not None and not any(self._unsafe.search(m["content"] + m.get(TRACE, "")) for m in msgs):
            tokens = self._tokenize_whole(parts, msgs)
            if tokens is not None and _count(tokens.contents) == expected and (
                    not self._verify or tokens.text == self._render(msgs, add_generation_prompt, tools)):
                return tokens  # else the run-by-run path below, which also reports what is wrong
        text, starts, contents, pos = [], [], {}, 0
        for k, part in enumerate(parts):  # special-token strings (odd k) stay; contents go in place
            starts.append(pos)
            text.append(self._fill(part, msgs, pos, contents) if k % 2 == 0 else part)
            pos += len(text[-1])
        ids, spans, specials = [], [], []
        for k, part in enumerate(text):
            pos = starts[k]
            if k % 2:  # a special-token string, put there by the template
                specials.append((pos, len(ids)))
                ids.append(self._special[part])
                spans.append(np.array([[pos, pos + len(part)]], dtype=np.int64))
                continue
            # a special token with rstrip (lstrip) swallows the whitespace after (before) it, as in HF
            lo = _space_run(part) if k and self._strip[text[k - 1]][1] else 0
            hi = len(part) - (_space_run(part[::-1]) if k + 1 < len(text) and self._strip[text[k + 1]][0] else 0)
            if lo < hi:
                self._encode_run(part[lo:hi], pos + lo, ids, spans)
        if _count(contents) != expected:
            raise ValueError("the chat template did not render every message exactly once")
        rendered = "".join(text)
        if self._verify and rendered != self._render(msgs, add_generation_prompt, tools):
            trimmed = [{**m, "content": m["content"].strip()} for m in msgs]
            if trimmed != msgs:  # a template that trims contents (Llama 3's ``| trim``): encode what it renders
                return self._tokenize(trimmed, add_generation_prompt, tools)
            raise ValueError("the chat template changes message text (escapes it)")
        spans_array = np.concatenate(spans) if spans else np.zeros((0, 2), dtype=np.int64)
        return _Tokens(rendered, ids, spans_array, contents, specials)

    def _tokenize_whole(self, parts: list[str], msgs: list[Message]) -> _Tokens | None:
        """Clean data in one encode call (the tokenizer splits at the special tokens itself, as the run-by-run
        path does); each special token is checked at its place, else None: the run-by-run path."""
        text, contents, expected, pos = [], {}, [], 0
        try:
            for k, part in enumerate(parts):
                if k % 2:
                    expected.append((pos, pos + len(part), self._special[part]))
                elif part:
                    part = self._fill(part, msgs, pos, contents)
                text.append(part)
                pos += len(part)
        except ValueError:
            return None  # the run-by-run path raises it with the same message
        rendered = "".join(text)
        if not rendered:
            return None
        enc = self._whole.encode(rendered, add_special_tokens=False)
        ids, offsets = enc.ids, enc.offsets
        spans = np.fromiter(chain.from_iterable(offsets), np.int64, 2 * len(offsets)).reshape(-1, 2)
        at = np.searchsorted(spans[:, 0], [start for start, _, _ in expected]).tolist()
        for k, (start, end, tid) in zip(at, expected):
            if k >= len(ids) or ids[k] != tid or spans[k, 0] != start or spans[k, 1] != end:
                return None
        return _Tokens(rendered, ids, spans, contents, [(start, k) for k, (start, _, _) in zip(at, expected)])

    @staticmethod
    def _fill(part: str, msgs: list[Message], pos: int, contents: dict) -> str:
        """Replace sentinels by message contents, recording each content's character span."""
        out, last = [], 0
        for match in _SENTINEL_RE.finditer(part):
            i = ord(match.group()) - _SENTINEL0
            m = msgs[i % _TRACE] if i % _TRACE < len(msgs) else {}
            piece = m.get(TRACE if i >= _TRACE else "content")
            if piece is None or i in contents:
                raise ValueError("the chat template did not render every message exactly once")
            out.append(part[last:match.start()])
            start = pos + sum(map(len, out))
            out.append(piece)
            contents[i] = (start, start + len(piece))
            last = match.end()
        out.append(part[last:])
        return "".join(out)

    def _encode_run(self, run: str, pos: int, ids: list[int], spans: list[np.ndarray]) -> None:
        if ANCHOR in run:
            raise ValueError("message text contains the reserved character U+10FFFD")
        lead = ANCHOR if pos else ""
        enc = self._plain.encode(lead + run, add_special_tokens=False)
        skip = 1 if lead else 0
        if skip and (not enc.ids or enc.ids[0] != self._anchor_id):
            raise ValueError("tokenizer did not keep the anchor token apart")
        ids.extend(enc.ids[skip:])
        spans.append(np.asarray(enc.offsets[skip:], dtype=np.int64).reshape(-1, 2) + (pos - len(lead)))


def _count(contents: dict) -> int:
    """How many message contents (not traces) ``contents`` holds."""
    return sum(k < _TRACE for k in contents)


def _space_run(text: str) -> int:
    """Length of the whitespace at the start of ``text`` (Unicode White_Space, as the tokenizers library
    strips it: Python's isspace() without the four separators U+001C..U+001F)."""
    n = 0
    while n < len(text) and text[n].isspace() and text[n] not in "\x1c\x1d\x1e\x1f":
        n += 1
    return n


def _require_special(tokenizer, tokens: Sequence[str | None], template: str, fix: str) -> None:
    special = special_token_ids(tokenizer)
    missing = [str(t) for t in tokens if t is None or t not in special]
    if missing:
        raise UserError(f"template '{template}': tokenizer {tokenizer.name_or_path} has no special token "
                        f"{', '.join(missing)}; {fix}")


def get_template(name: str, tokenizer, model_type: str | None = None) -> ChatTemplate:
    """The chat template ``name`` for ``tokenizer``; UserError when it does not fit the tokenizer."""
    eos = tokenizer.eos_token
    fix = "use template 'tokenizer' or a tokenizer made by scripts/00_train_tokenizer.py"
    if name == "chatml":
        _require_special(tokenizer, [IM_START, IM_END], name, fix)
        return ChatTemplate(name, tokenizer, render_chatml, [IM_END], tools=True)
    if name in ("instruct", "chat", "alpaca"):
        _require_special(tokenizer, [eos], name, "set eos_token in tokenizer_config.json")
        render = {"instruct": lambda m, g, t=(): render_instruct(m, eos),
                  "alpaca": lambda m, g, t=(): render_instruct(m, eos, ALPACA_PREAMBLE),
                  "chat": lambda m, g, t=(): render_chat(m, eos)}[name]
        return ChatTemplate(name, tokenizer, render, [eos], notes=["no bos token is added"])
    if name == "tokenizer":
        return tokenizer_template(tokenizer, model_type)
    raise UserError(f"template: unknown template '{name}'; use one of {', '.join(TEMPLATES)}")


def model_type_for(tokenizer_dir: str | Path) -> str | None:
    """``model_type`` from a config.json beside the tokenizer files, when there is one."""
    config = Path(tokenizer_dir) / "config.json"
    try:
        return json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (OSError, ValueError, AttributeError):
        return None


# ---------------------------------------------------------------------- the tokenizer's own template
def tokenizer_template(tokenizer, model_type: str | None = None) -> ChatTemplate:
    """The tokenizer's ``chat_template``: family detected, system folded where it has no system role."""
    where = f"template 'tokenizer': {tokenizer.name_or_path}"
    if not isinstance(tokenizer.chat_template, str) or not tokenizer.chat_template.strip():
        raise UserError(f"{where} has no chat_template; use template chatml, instruct, chat or alpaca")
    family = detect_family(tokenizer, model_type)

    def render(msgs: list[Message], add_generation_prompt: bool, tools: Sequence[dict] = ()) -> str:
        try:
            return tokenizer.apply_chat_template(msgs, tools=list(tools) or None, tokenize=False,
                                                 add_generation_prompt=add_generation_prompt, date_string=FIXED_DATE)
        except Exception as err:  # jinja2 errors, including the template's own raise_exception()
            raise ValueError(f"chat template error: {err}") from None

    fold = family == "gemma" or not _renders_system(render)
    notes = [f"model family: {FAMILY_NAMES[family]} (detected from the tokenizer)"]
    if fold:
        notes.append(FOLD_NOTE.format(family=FAMILY_NAMES[family]))
    if "strftime_now" in tokenizer.chat_template or "date_string" in tokenizer.chat_template:
        notes.append(f"date in the template fixed to {FIXED_DATE} for reproducibility")
    tools, traces = renders_tools(render), renders_reasoning(render)
    notes.append("renders tools, tool calls and tool results" if tools else "renders no tools or tool calls")
    notes.append("renders reasoning traces (reasoning_content)" if traces else "renders no reasoning traces")
    template = ChatTemplate("tokenizer", tokenizer, render, [], family, notes, fold, verify=True, tools=tools,
                            traces=traces)
    end = _probe_end_of_turn(template, where)
    template.end_of_turn_ids = [template._special[end]]
    template.stop_token_ids = list(dict.fromkeys(template.end_of_turn_ids + template.stop_token_ids))
    return template


def _renders_system(render: Callable[[list[Message], bool], str]) -> bool:
    probe = [{"role": r, "content": chr(_SENTINEL0 + i)} for i, r in enumerate(("system", "user", "assistant"))]
    try:
        return chr(_SENTINEL0) in render(probe, False)
    except ValueError:
        return False


def _probe_end_of_turn(template: ChatTemplate, where: str) -> str:
    """The first special token the template writes after an assistant reply: its end-of-turn marker."""
    probe = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]
    try:
        tokens = template._tokenize(probe, add_generation_prompt=False)
    except ValueError as err:
        raise UserError(f"{where}: cannot render a user/assistant exchange ({err}); "
                        "use template chatml, instruct, chat or alpaca") from None
    end = tokens.contents[1][1]
    after = [tokens.text[s:tokens.spans[k][1]] for s, k in tokens.specials if s >= end]
    if not after:
        raise UserError(f"{where}: its chat_template writes no special end-of-turn token after an "
                        "assistant reply, so a model could not learn to stop; use template chatml, "
                        "instruct, chat or alpaca")
    return after[0]
