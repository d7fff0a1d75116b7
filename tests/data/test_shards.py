"""Shard writing and the reader-side checks the trainer relies on."""
from __future__ import annotations

import json

import pytest

from utils.common.errors import UserError
from utils.common.hashing import sha256_file
from shard_helpers import shard_examples
from utils.common.publish import write_json_atomic
from utils.data.shards import FORMAT_VERSION, ShardWriter, example_line, load_manifest, parse_example, verify_data_dir


def make_dir(tmp_path, n_train=5, n_val=2, shard_size=2, tokenizer_sha="abc"):
    splits = {}
    for split, n in (("train", n_train), ("val", n_val)):
        writer = ShardWriter(tmp_path, split, shard_size)
        for i in range(n):
            writer.add(example_line([4, 10 + i, 5], [-100, 10 + i, 5], f"src{i % 2}"), 3, 2)
        splits[split] = writer.close()
    write_json_atomic(tmp_path / "manifest.json", {
        "format_version": FORMAT_VERSION, "tokenizer_metadata": {"tokenizer_sha256": tokenizer_sha},
        "sequence_length": 16, "splits": splits})
    return splits


def test_writer_rotates_shards_and_hashes_them(tmp_path):
    splits = make_dir(tmp_path)
    train = splits["train"]
    assert [s["file"] for s in train["shards"]] == ["train_00000.jsonl", "train_00001.jsonl", "train_00002.jsonl"]
    assert [s["conversations"] for s in train["shards"]] == [2, 2, 1]
    assert (train["conversations"], train["total_tokens"], train["supervised_tokens"]) == (5, 15, 10)
    for shard in train["shards"]:
        assert sha256_file(tmp_path / shard["file"]) == shard["sha256"]
    first = (tmp_path / "train_00000.jsonl").read_bytes()
    assert first.startswith(b'{"input_ids":[4,10,5],"labels":[-100,10,5],"source":"src0"}\n')


def test_reader_streams_examples_in_order(tmp_path):
    make_dir(tmp_path)
    examples = list(shard_examples(tmp_path, "train"))
    assert [e["input_ids"][1] for e in examples] == [10, 11, 12, 13, 14]
    assert len(list(shard_examples(tmp_path, "val"))) == 2
    assert verify_data_dir(tmp_path, "abc")["sequence_length"] == 16


def test_missing_or_changed_shard_is_named(tmp_path):
    make_dir(tmp_path)
    (tmp_path / "train_00001.jsonl").write_text("tampered\n")
    with pytest.raises(UserError, match=r"train_00001.jsonl: sha256 differs .*re-run the prepare stage"):
        verify_data_dir(tmp_path)
    (tmp_path / "train_00001.jsonl").unlink()
    with pytest.raises(UserError, match=r"train_00001.jsonl: shard listed in manifest.json is missing"):
        verify_data_dir(tmp_path)


def test_tokenizer_mismatch_names_both_hashes(tmp_path):
    make_dir(tmp_path, tokenizer_sha="aaa")
    with pytest.raises(UserError) as err:
        verify_data_dir(tmp_path, expected_tokenizer_sha="bbb")
    message = str(err.value)
    assert message.startswith("Tokenizer mismatch between datasets!")
    assert "aaa" in message and "bbb" in message and str(tmp_path) in message


def test_bad_manifest_and_bad_lines_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="manifest.json: not found"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text("{nope")
    with pytest.raises(UserError, match="manifest.json: unreadable"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 99}))
    with pytest.raises(UserError, match="format_version 99"):
        load_manifest(tmp_path)
    make_dir(tmp_path)
    (tmp_path / "val_00000.jsonl").write_text('{"input_ids":[1],"labels":[],"source":"x"}\n')
    with pytest.raises(UserError, match=r"val_00000.jsonl:1: not a valid example"):
        list(shard_examples(tmp_path, "val"))


@pytest.mark.parametrize("line", ['{"input_ids":[1],"labels":[],"source":"x"}', '{"input_ids":[],"labels":[],"source":"x"}',
                                  '{"input_ids":[1],"labels":[1]}', '{"input_ids":[[1]],"labels":[[1]],"source":"x"}',
                                  '{"input_ids":["a"],"labels":[1],"source":"x"}', '[1, 2]', '{nope'])
def test_the_one_shard_parser_refuses_what_breaks_the_contract(line):
    with pytest.raises(UserError) as err:
        parse_example(line, "train_00000.jsonl:7")
    assert str(err.value).startswith("train_00000.jsonl:7: not a valid example")
    assert "re-run the prepare stage" in str(err.value)
    ids, labels, source = parse_example(example_line([5, 6], [-100, 6], "s"), "x")
    assert ids.tolist() == [5, 6] and labels.tolist() == [-100, 6] and source == "s"
