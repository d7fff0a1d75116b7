"""LAST pointers: what the make targets record as made last, and what they read back."""
from __future__ import annotations

import json

from utils.common.pointers import corpus_tokenizer, read_last, trained_with, write_last


def test_a_pointer_names_a_sibling_that_still_exists(tmp_path):
    assert read_last(tmp_path) is None
    (tmp_path / "alpaca").mkdir()
    write_last(tmp_path, "alpaca")
    assert (tmp_path / "LAST").read_text() == "alpaca\n"
    assert read_last(tmp_path) == tmp_path / "alpaca"
    (tmp_path / "alpaca").rmdir()
    assert read_last(tmp_path) is None  # deleted since: no default from it
    (tmp_path / "LAST").write_text("../elsewhere\n")
    assert read_last(tmp_path) is None  # never a path outside the folder


def test_a_corpus_names_its_tokenizer_and_a_run_its_inputs(tmp_path):
    corpus, tokenizer = tmp_path / "corpus", tmp_path / "tok"
    corpus.mkdir()
    tokenizer.mkdir()
    (corpus / "manifest.json").write_text(json.dumps({"tokenizer_metadata": {"tokenizer_path": str(tokenizer)}}))
    assert corpus_tokenizer(corpus) == str(tokenizer)
    tokenizer.rmdir()
    assert corpus_tokenizer(corpus) is None
    assert trained_with(tmp_path) == {}
    (tmp_path / "training_summary.json").write_text(json.dumps({"model_path": "m", "data_dirs": ["d"]}))
    assert trained_with(tmp_path)["data_dirs"] == ["d"]
