"""Cleaning and quality filters for conversations, exact-duplicate detection, and overlong handling.

Order of work for one conversation (utils.data.prepare wires it):

1. ``clean_messages``: Unicode normal form, control characters removed (newline and tab kept,
   ``\\r\\n`` and lone ``\\r`` become ``\\n``), contents stripped;
2. ``text_drop_reason``: the character-level rules of ``quality_filters``;
3. ``conversation_hash``: the key for exact-duplicate removal and for the train/val split;
4. after tokenization, ``fit_to_length``: ``max_tokens``, then ``sequence_length`` (drop or truncate).

Every rule returns a short stable reason string; the caller counts it per source.
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Sequence

from utils.common.config_schema import setting
from utils.common.errors import UserError
from utils.data.reasoning import KEY as TRACE
from utils.data.templates import ChatTemplate, EncodedConversation

NORMAL_FORMS = ("NFC", "NFKC", "none")
"""Unicode normal forms quality_filters.unicode_normalization applies (none: as read)."""
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")  # Cc without \t and \n (\r is turned into \n first)
_URL = re.compile(r"(?i)\b(?:https?://|ftp://|www\.)\S")
_CODE_FENCE = re.compile(r"(?m)^[ ]{0,3}(?:```|~~~)")
_WHITESPACE = re.compile(r"\s+")


@dataclass
class QualityFilters:
    """``quality_filters`` of an SFT dataset config."""

    min_prompt_length: int = setting(0, minimum=0)
    """Drop a conversation whose user text (all user turns together; the system prompt is not counted) is shorter
    than this many characters."""
    max_prompt_length: int | None = setting(None, type="integer", minimum=0)
    """Drop a conversation whose user text is longer than this many characters."""
    min_response_length: int = setting(1, minimum=0)
    """Drop a conversation whose assistant text is shorter than this many characters."""
    max_response_length: int | None = setting(None, type="integer", minimum=0)
    """Drop a conversation whose assistant text is longer than this many characters."""
    max_tokens: int | None = setting(None, type="integer", minimum=1)
    """Drop a conversation whose rendered, tokenized form is longer than this many tokens (counted before any
    truncation to sequence_length)."""
    filter_urls: bool = False
    """Drop conversations whose assistant text contains URLs."""
    filter_code_blocks: bool = False
    """Drop conversations that contain fenced code blocks."""
    dedupe: bool = True
    """Keep only the first of conversations with identical messages, compared after NFKC, case folding and
    whitespace collapsing, across all sources."""
    unicode_normalization: str = setting("NFC", enum=NORMAL_FORMS)
    """Unicode normal form applied to every message: NFC, NFKC, or none."""
    strip_control_chars: bool = True
    """Remove control characters other than newline and tab from every message."""

    def __post_init__(self) -> None:
        for low, high in (("min_prompt_length", "max_prompt_length"),
                          ("min_response_length", "max_response_length")):
            if getattr(self, high) is not None and getattr(self, high) < getattr(self, low):
                raise UserError(f"quality_filters: {high} ({getattr(self, high)}) is below {low} "
                                f"({getattr(self, low)}); raise it or lower {low}")


def clean_text(text: str, filters: QualityFilters) -> str:
    """One message content, cleaned as configured and stripped."""
    if filters.unicode_normalization != "none":
        text = unicodedata.normalize(filters.unicode_normalization, text)
    if filters.strip_control_chars:
        text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return text.strip()


def clean_messages(messages: Sequence[dict], filters: QualityFilters) -> tuple[dict, ...]:
    """Every content and reasoning trace cleaned; roles, order and tool calls untouched."""
    return tuple({**m, "content": clean_text(m["content"], filters),
                  **({TRACE: clean_text(m[TRACE], filters)} if m.get(TRACE) else {})} for m in messages)


def _calls_text(message: dict) -> str:
    """An assistant turn's tool calls as JSON text ("" when it has none): they count as its response."""
    calls = message.get("tool_calls")
    return json.dumps([c["function"] for c in calls], ensure_ascii=False, sort_keys=True) if calls else ""


def text_drop_reason(messages: Sequence[dict], filters: QualityFilters) -> str | None:
    """Why the cleaned conversation fails the character-level rules, or None when it passes."""
    empty = [m for m in messages if not m["content"] and not m.get("tool_calls")]
    if empty:
        return "empty_response" if any(m["role"] == "assistant" for m in empty) else "empty_prompt"
    prompt = sum(len(m["content"]) for m in messages if m["role"] == "user")
    response = sum(len(m["content"]) + len(_calls_text(m)) for m in messages if m["role"] == "assistant")
    for reason, failed in (
        ("prompt_too_short", prompt < filters.min_prompt_length),
        ("prompt_too_long", filters.max_prompt_length is not None and prompt > filters.max_prompt_length),
        ("response_too_short", response < filters.min_response_length),
        ("response_too_long", filters.max_response_length is not None and response > filters.max_response_length),
    ):
        if failed:
            return reason
    if filters.filter_urls and any(m["role"] == "assistant" and _URL.search(m["content"]) for m in messages):
        return "url"
    if filters.filter_code_blocks and any(_CODE_FENCE.search(m["content"]) for m in messages):
        return "code_block"
    return None


def conversation_hash(messages: Sequence[dict], tools: Sequence[dict] = ()) -> bytes:
    """SHA256 of the conversation after NFKC, casefold and whitespace collapsing (roles included); tool calls
    and tool definitions count as they are, reasoning traces as they are (plain conversations hash as they did
    before tools and traces).

    Used for exact-duplicate removal and, being independent of other rows, for the train/val split.
    """
    parts = []
    for m in messages:
        text = _WHITESPACE.sub(" ", unicodedata.normalize("NFKC", m["content"]).casefold()).strip()
        parts.append(f"{m['role']}\x1f{text}" + (f"\x1f{_calls_text(m)}" if m.get("tool_calls") else "")
                     + (f"\x1fthink\x1f{m[TRACE]}" if m.get(TRACE) else ""))
    if tools:
        parts.append("tools\x1f" + json.dumps(list(tools), ensure_ascii=False, sort_keys=True))
    return hashlib.sha256("\x1e".join(parts).encode("utf-8")).digest()


class Deduper:
    """Remembers conversation hashes (16 bytes each: memory grows with unique conversations only)."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self._seen: set[bytes] = set()

    def is_duplicate(self, digest: bytes) -> bool:
        """True when this hash was seen before; records it otherwise."""
        if not self.enabled:
            return False
        key = digest[:16]
        if key in self._seen:
            return True
        self._seen.add(key)
        return False


def fit_to_length(template: ChatTemplate, messages: Sequence[dict], encoded: EncodedConversation,
                  sequence_length: int, overlong: str, train_on: str,
                  tools: Sequence[dict] = (), reasoning: str = "train") -> tuple[EncodedConversation | None, str]:
    """(``encoded``, "") when it fits, (a shorter encoding, "truncated"), or (None, drop reason).

    ``truncate`` drops trailing turns so the conversation still ends right after a complete assistant
    turn and its end-of-turn token; the shorter conversation is re-encoded (templates may render the last
    turn differently), never cut mid-turn. When even the first exchange does not fit, it is dropped.
    """
    if len(encoded.input_ids) <= sequence_length:
        return encoded, ""
    if overlong == "drop":
        return None, "overlong"
    assistant_at = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    for k in range(len(encoded.turn_ends) - 2, -1, -1):  # the last turn is the one that did not fit
        if encoded.turn_ends[k] > sequence_length:
            continue
        shorter = template.encode(messages[:assistant_at[k] + 1], train_on, tools, reasoning)
        if len(shorter.input_ids) <= sequence_length and shorter.num_supervised:
            return shorter, "truncated"
    return None, "overlong_first_turn"
