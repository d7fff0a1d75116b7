"""Raw-text sources for tokenizer training and pre-training: files, globs, JSONL fields, HF datasets."""
from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from utils.common.errors import UserError
from utils.data.pretrain_data import PretrainData, build_streams, is_val
from utils.data.text_sources import TextSource, field_texts, iter_documents


def test_text_files_dirs_and_globs_in_stable_order(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "b.txt").write_text("second")
    (tmp_path / "d" / "a.md").write_text("first")
    (tmp_path / "d" / "skip.bin").write_text("not text")
    (tmp_path / "c.txt").write_text("third")
    src = TextSource(type="text_files", paths=[str(tmp_path / "d"), str(tmp_path / "*.txt")])
    assert list(iter_documents(src)) == ["third", "first", "second"]  # sorted by path: c.txt < d/a.md


def test_jsonl_fields_walk_lists_and_read_gzip(tmp_path):
    rows = [{"messages": [{"content": "hi"}, {"content": "there"}], "meta": {"title": "T"}}, {"other": 1}]
    with gzip.open(tmp_path / "x.jsonl.gz", "wt") as handle:
        handle.write("\n".join(json.dumps(r) for r in rows) + "\n{broken\n")
    src = TextSource(type="jsonl", paths=[str(tmp_path / "x.jsonl.gz")], fields=["messages.content", "meta.title"])
    assert list(iter_documents(src)) == ["hi\nthere\nT"]
    assert list(field_texts({"a": [{"b": "x"}, {"b": ""}]}, "a.b")) == ["x"]


def test_huggingface_source_with_local_files(tmp_path):
    path = tmp_path / "data.jsonl"
    path.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(5)))
    src = TextSource(type="huggingface", dataset_name="json", data_files=str(path), max_documents=3)
    assert list(iter_documents(src)) == ["document 0", "document 1", "document 2"]


def test_missing_paths_and_datasets_are_one_line(tmp_path):
    with pytest.raises(UserError, match="nothing found at"):
        list(iter_documents(TextSource(type="text_files", name="s", paths=[str(tmp_path / "none*.txt")])))
    with pytest.raises(UserError, match="cannot load dataset"):
        list(iter_documents(TextSource(type="huggingface", dataset_name="json",
                                       data_files=str(tmp_path / "missing.jsonl"))))


def test_token_streams_are_eos_separated_and_split_by_text(tmp_path, toy_tokenizer):
    (tmp_path / "docs").mkdir()
    texts = [f"Document number {i} talks about lists and dicts." for i in range(40)]
    for i, text in enumerate(texts):
        (tmp_path / "docs" / f"{i:02d}.txt").write_text(text)
    data = PretrainData(sources=[TextSource(type="text_files", paths=[str(tmp_path / "docs")])],
                        sequence_length=16, val_ratio=0.25)
    streams, stats = build_streams(data, toy_tokenizer, "fp", tmp_path / "cache", show_progress=False)
    n_val = sum(is_val(t, 0.25) for t in texts)
    assert stats.documents == {"train": 40 - n_val, "val": n_val} and 0 < n_val < 40
    eos = toy_tokenizer.eos_token_id
    assert int((np.asarray(streams["train"]) == eos).sum()) == 40 - n_val
    again, _ = build_streams(data, toy_tokenizer, "fp", tmp_path / "cache", show_progress=False)  # cached
    assert np.array_equal(again["train"], streams["train"])
