"""The trained template as Jinja: apply_chat_template with it renders (and tokenizes to) what training rendered."""
from __future__ import annotations

import json

import pytest

from chat_helpers import CONVERSATIONS
from test_templates import FAMILIES, LLAMA3, family_tokenizer
from utils.data.chat_jinja import (CHAT_TEMPLATE_FILE, trained_chat_template, without_generation_tags,
                                   write_trained_template)
from utils.data.fingerprint import tokenizer_fingerprint
from utils.data.templates import FIXED_DATE, get_template
from utils.data.tokenizer import copy_tokenizer_files, load_tokenizer

LLAMA3_DATED = LLAMA3.replace("{{ bos_token }}", "{{ bos_token }}{% if not date_string is defined %}"
                              "{% set date_string = strftime_now('%d %b %Y') %}{% endif %}"
                              "<|start_header_id|>system<|end_header_id|>\n\nToday Date: {{ date_string }}<|eot_id|>")
OWN = ["chatml", "instruct", "chat", "alpaca"]
CASES = [*OWN, *FAMILIES, "llama3_dated"]


def _tokenizer(toy_dir, case: str):
    if case in OWN:
        return load_tokenizer(toy_dir)
    if case == "llama3_dated":
        tok = family_tokenizer(toy_dir, "llama3")
        tok.chat_template = LLAMA3_DATED
        return tok
    return family_tokenizer(toy_dir, case)


@pytest.fixture(scope="module")
def pairs(toy_tokenizer_dir):
    """case -> (the training template, a second tokenizer carrying its Jinja as chat_template)."""
    out = {}
    for case in CASES:
        template = get_template(case if case in OWN else "tokenizer", _tokenizer(toy_tokenizer_dir, case))
        exported = _tokenizer(toy_tokenizer_dir, case)
        exported.chat_template = trained_chat_template(template)
        out[case] = (template, exported)
    return out


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("conv", range(len(CONVERSATIONS)))
def test_jinja_renders_and_tokenizes_what_training_did(pairs, case, conv):
    template, exported = pairs[case]
    messages = CONVERSATIONS[conv]
    assert exported.apply_chat_template(messages, tokenize=False) == template.render(messages)
    assert exported.apply_chat_template(messages, tokenize=True, return_dict=False) == \
        template.encode(messages).input_ids
    prompt = exported.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True, return_dict=False)
    assert prompt == template.encode_prompt(messages)


@pytest.mark.parametrize("case", ["chatml", "instruct", "chat", "gemma"])
def test_generation_marks_are_the_supervised_tokens(pairs, case):
    template, exported = pairs[case]
    messages = CONVERSATIONS[1]
    if case == "gemma":  # the family's own template marks nothing: the mask stays training's alone
        assert "{% generation %}" not in trained_chat_template(template)
        return
    out = exported.apply_chat_template(messages, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    labels = template.encode(messages).labels
    assert out["assistant_masks"] == [int(label != -100) for label in labels]


def test_without_generation_tags_renders_the_same(pairs):
    template, exported = pairs["instruct"]
    plain = without_generation_tags(exported.chat_template)
    assert "{% generation %}" not in plain and "{% endgeneration %}" not in plain
    exported_plain = load_tokenizer(template.tokenizer.name_or_path)
    exported_plain.chat_template = plain
    for messages in CONVERSATIONS:
        assert exported_plain.apply_chat_template(messages, tokenize=False) == template.render(messages)


def test_the_date_is_the_trained_one_unless_given(pairs):
    _, exported = pairs["llama3_dated"]
    text = exported.apply_chat_template(CONVERSATIONS[0], tokenize=False)
    assert f"Today Date: {FIXED_DATE}" in text
    assert "Today Date: 1 Jan 2030" in exported.apply_chat_template(CONVERSATIONS[0], tokenize=False,
                                                                    date_string="1 Jan 2030")


def test_a_tokenizer_that_renders_it_already_keeps_its_files(toy_tokenizer_dir, tmp_path):
    copy_tokenizer_files(toy_tokenizer_dir, tmp_path)
    before = tokenizer_fingerprint(tmp_path)
    assert write_trained_template(tmp_path, "chatml") is False
    assert tokenizer_fingerprint(tmp_path) == before


def test_another_template_is_written_once_where_every_reader_finds_it(toy_tokenizer_dir, tmp_path):
    copy_tokenizer_files(toy_tokenizer_dir, tmp_path)
    config = json.loads((tmp_path / "tokenizer_config.json").read_text())
    config["chat_template"] = "{{ 'stale' }}"  # a second copy a GGUF converter would read first
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(config))
    assert write_trained_template(tmp_path, "alpaca") is True
    assert "chat_template" not in json.loads((tmp_path / "tokenizer_config.json").read_text())
    assert "Below is an instruction" in (tmp_path / CHAT_TEMPLATE_FILE).read_text()
    assert write_trained_template(tmp_path, "alpaca") is False  # idempotent
