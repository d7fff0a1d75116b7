"""Tokenizer: round trip, control tokens stay out of text, fingerprint stability, weighted mix."""
from __future__ import annotations

import shutil

import pytest

from utils.common.errors import UserError
from utils.data.fingerprint import TOKENIZER_FILES, tokenizer_fingerprint
from utils.data.text_sources import TextSource
from utils.data.tokenizer import CHATML_TEMPLATE, hf_dir_for, load_tokenizer, write_mixed_text

SAMPLES = [
    "def add(a, b):\n    return a + b  # 12 + 30 = 42",
    "Tabs\tand  double  spaces, newlines\n\nand unicode: é, 漢字, 🙂",
    "What is 7 plus 5? The answer is 12.",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(toy_tokenizer, text):
    ids = toy_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert toy_tokenizer.decode(ids) == text


def test_hf_tokenizer_matches_sentencepiece(toy_tokenizer, toy_tokenizer_dir):
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(toy_tokenizer_dir.parent / "toy.model"))
    for text in SAMPLES:
        assert toy_tokenizer(text, add_special_tokens=False)["input_ids"] == sp.encode(text)


def test_special_tokens_and_chat_template(toy_tokenizer):
    tok = toy_tokenizer
    assert (tok.pad_token_id, tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (0, 1, 2, 3)
    assert tok.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [4, 5]
    assert tok.chat_template == CHATML_TEMPLATE
    # dataset text that spells a control token stays plain text
    ids = tok("<|im_start|>system", add_special_tokens=False, split_special_tokens=True)["input_ids"]
    assert not set(ids) & {0, 1, 2, 3, 4, 5}


def test_fingerprint_is_stable_and_sensitive(toy_tokenizer_dir, tmp_path):
    first = tokenizer_fingerprint(toy_tokenizer_dir)
    copy = tmp_path / "copy"
    shutil.copytree(toy_tokenizer_dir, copy)
    (copy / "README.md").write_text("not a tokenizer file")  # other files are not hashed
    assert tokenizer_fingerprint(copy) == first
    data = bytearray((copy / "tokenizer.json").read_bytes())
    data[len(data) // 2] ^= 1
    (copy / "tokenizer.json").write_bytes(bytes(data))
    assert tokenizer_fingerprint(copy) != first


def test_fingerprint_of_a_model_file_is_its_sha256(toy_tokenizer_dir):
    import hashlib

    model = toy_tokenizer_dir.parent / "toy.model"
    assert tokenizer_fingerprint(model) == hashlib.sha256(model.read_bytes()).hexdigest()
    assert "tokenizer.json" in TOKENIZER_FILES


def test_model_file_resolves_to_its_hf_dir(toy_tokenizer_dir):
    assert hf_dir_for(toy_tokenizer_dir.parent / "toy.model") == toy_tokenizer_dir
    assert len(load_tokenizer(toy_tokenizer_dir.parent / "toy.model")) == 1000


def test_missing_tokenizer_is_one_line(tmp_path):
    with pytest.raises(UserError, match="tokenizer not found"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(UserError, match="no tokenizer files"):
        tokenizer_fingerprint(tmp_path)


def test_weighted_mix_splits_the_budget(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "doc.txt").write_text("alpha line\n" * 10)
    (tmp_path / "b.jsonl").write_text('{"messages": [{"content": "beta"}, {"content": "gamma"}]}\n')
    sources = [TextSource(type="text_files", name="a", paths=[str(tmp_path / "a")], weight=3),
               TextSource(type="jsonl", name="b", paths=[str(tmp_path / "b.jsonl")], fields=["messages.content"],
                          weight=1)]
    written = write_mixed_text(sources, 400, tmp_path / "mix.txt")
    assert 290 <= written["a"] <= 310 and 90 <= written["b"] <= 110  # small sources repeat up to their share
    assert "gamma" in (tmp_path / "mix.txt").read_text()
