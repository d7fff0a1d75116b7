"""Cleaning, quality filters, duplicate keys and overlong handling."""
from __future__ import annotations

import pytest

from utils.common.errors import UserError
from utils.data.filters import (Deduper, QualityFilters, clean_messages, clean_text, conversation_hash,
                           fit_to_length, text_drop_reason)
from utils.data.templates import get_template


def conv(prompt, reply, *more):
    msgs = [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]
    for i, text in enumerate(more):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": text})
    return tuple(msgs)


def test_clean_text_normalizes_and_strips_control_characters():
    f = QualityFilters()
    assert clean_text("  a\r\nb\rc\x00d\x1b[0m\te\u0085 ", f) == "a\nb\ncd[0m\te"
    assert clean_text("ﬁ", QualityFilters(unicode_normalization="NFKC")) == "fi"
    assert clean_text("ﬁ", f) == "ﬁ"  # NFC keeps compatibility characters
    assert clean_text("e\u0301", f) == "\u00e9"
    assert clean_text("a\x00b", QualityFilters(strip_control_chars=False, unicode_normalization="none")) == "a\x00b"


@pytest.mark.parametrize("messages, filters, reason", [
    (conv("hi", "\x00\x01"), QualityFilters(), "empty_response"),
    (conv("\x07", "ok"), QualityFilters(), "empty_prompt"),
    (conv("hi", "ok"), QualityFilters(min_prompt_length=3), "prompt_too_short"),
    (conv("hello there", "ok"), QualityFilters(max_prompt_length=5), "prompt_too_long"),
    (conv("hi", "ok"), QualityFilters(min_response_length=5), "response_too_short"),
    (conv("hi", "a long answer"), QualityFilters(max_response_length=5), "response_too_long"),
    (conv("hi", "see https://example.com"), QualityFilters(filter_urls=True), "url"),
    (conv("hi", "see www.example.com"), QualityFilters(filter_urls=True), "url"),
    (conv("look at https://example.com", "fine"), QualityFilters(filter_urls=True), None),  # prompts may cite
    (conv("fix\n```py\nx=1\n```", "done"), QualityFilters(filter_code_blocks=True), "code_block"),
    (conv("hi", "~~~\ncode\n~~~"), QualityFilters(filter_code_blocks=True), "code_block"),
    (conv("hi", "use `x` inline"), QualityFilters(filter_code_blocks=True), None),
    (conv("hi", "ok", "more?", "yes"), QualityFilters(min_response_length=5), None),  # totals over turns
])
def test_text_drop_reasons(messages, filters, reason):
    assert text_drop_reason(clean_messages(messages, filters), filters) == reason


def test_min_above_max_is_a_user_error():
    with pytest.raises(UserError, match="max_prompt_length"):
        QualityFilters(min_prompt_length=10, max_prompt_length=5)


def test_hash_ignores_case_width_and_whitespace_but_not_roles_or_words():
    base = conversation_hash(conv("What is 2+2?", "Four."))
    assert conversation_hash(conv("  what   IS ２+2?\n", "four.")) == base
    assert conversation_hash(conv("What is 2+2?", "Five.")) != base
    swapped = ({"role": "assistant", "content": "What is 2+2?"}, {"role": "user", "content": "Four."})
    assert conversation_hash(swapped) != base


def test_deduper_keeps_the_first_only_when_enabled():
    d = Deduper()
    h = conversation_hash(conv("a", "b"))
    assert [d.is_duplicate(h), d.is_duplicate(h)] == [False, True]
    off = Deduper(enabled=False)
    assert [off.is_duplicate(h), off.is_duplicate(h)] == [False, False]


@pytest.fixture(scope="module")
def chatml(toy_tokenizer):
    return get_template("chatml", toy_tokenizer)


def test_fit_to_length_keeps_what_fits(chatml):
    messages = conv("What is 2 plus 3?", "5")
    encoded = chatml.encode(messages)
    assert fit_to_length(chatml, messages, encoded, len(encoded.input_ids), "drop", "all_assistant_turns") == (encoded, "")


def test_truncate_drops_trailing_turns_and_keeps_the_end_of_turn(chatml):
    messages = conv("What is 2 plus 3?", "5", "And a long story?", "Once upon a time " * 20)
    full = chatml.encode(messages)
    first = chatml.encode(messages[:2])
    limit = len(first.input_ids) + 5
    assert fit_to_length(chatml, messages, full, limit, "drop", "all_assistant_turns") == (None, "overlong")
    fitted, note = fit_to_length(chatml, messages, full, limit, "truncate", "all_assistant_turns")
    assert note == "truncated" and fitted.input_ids == first.input_ids
    supervised = [t for t, label in zip(fitted.input_ids, fitted.labels) if label != -100]
    assert supervised[-1] == chatml.end_of_turn_ids[0]
    assert fit_to_length(chatml, messages, full, len(first.input_ids) - 1, "truncate",
                         "all_assistant_turns") == (None, "overlong_first_turn")
