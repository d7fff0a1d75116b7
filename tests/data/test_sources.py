"""Readers: every row with its exact origin, bad lines as BadRow, config mistakes as one-line UserErrors."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

import utils.data.sources as sources
from utils.common.config import from_dict, load_schema, validate
from utils.common.errors import UserError
from utils.data.dataset_entry import DatasetSpec, Participants
from utils.data.sources import Row, iter_rows


def rows(spec: DatasetSpec, base: Path) -> list:
    return list(iter_rows(spec, base))


def summary(items: list) -> list[tuple]:
    return [(r.origin, r.data) if isinstance(r, Row) else (r.origin, r.reason) for r in items]


# --- JSONL -----------------------------------------------------------------------------------------

JSONL_BYTES = (b'\xef\xbb\xbf{"a": 1}\r\n'      # 1: BOM + CRLF tolerated
               b'\n'                             # 2: blank: not a row
               b'{"a": 2\n'                      # 3: invalid JSON
               b'{"a": "\xff"}\n'                # 4: invalid UTF-8
               b'{"a": "x\x00"}\n'               # 5: NUL byte
               b'[1, 2]\n'                       # 6: valid JSON, not an object (judged upstream)
               b'{"a": "caf\xc3\xa9"}')          # 7: no final newline


def test_jsonl_rows_and_bad_lines_keep_their_line_numbers(tmp_path):
    (tmp_path / "d.jsonl").write_bytes(JSONL_BYTES)
    got = summary(rows(DatasetSpec("d", "jsonl", "d.jsonl"), tmp_path))
    assert got == [("d.jsonl:1", {"a": 1}), ("d.jsonl:3", "invalid_json"), ("d.jsonl:4", "invalid_utf8"),
                   ("d.jsonl:5", "nul_byte"), ("d.jsonl:6", [1, 2]), ("d.jsonl:7", {"a": "café"})]


def test_jsonl_gz_and_directory_of_files(tmp_path):
    (tmp_path / "dir").mkdir()
    with gzip.open(tmp_path / "dir" / "b.jsonl.gz", "wb") as f:
        f.write(b'{"n": 2}\n{"n": 3}\n')
    (tmp_path / "dir" / "a.jsonl").write_text('{"n": 1}\n')
    (tmp_path / "dir" / "notes.txt").write_text("not data")
    got = summary(rows(DatasetSpec("d", "jsonl", "dir"), tmp_path))
    assert got == [("dir/a.jsonl:1", {"n": 1}), ("dir/b.jsonl.gz:1", {"n": 2}), ("dir/b.jsonl.gz:2", {"n": 3})]


def test_glob_is_sorted_and_an_empty_glob_is_a_user_error(tmp_path):
    for name in ("p2.jsonl", "p1.jsonl"):
        (tmp_path / name).write_text('{"f": "%s"}\n' % name)
    got = summary(rows(DatasetSpec("d", "jsonl", "p*.jsonl"), tmp_path))
    assert [o for o, _ in got] == ["p1.jsonl:1", "p2.jsonl:1"]
    with pytest.raises(UserError, match="dataset 'd'.*matches no"):
        rows(DatasetSpec("d", "jsonl", "q*.jsonl"), tmp_path)


def test_missing_file_names_the_entry_and_field(tmp_path):
    with pytest.raises(UserError, match=r"dataset 'alpaca': dataset_name: 'nope.json' not found"):
        rows(DatasetSpec("alpaca", "json", "nope.json"), tmp_path)


def test_corrupt_gzip_is_a_user_error(tmp_path):
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(b'{"a": 1}\n' * 100)[:25])
    with pytest.raises(UserError, match="d.jsonl.gz: cannot read"):
        rows(DatasetSpec("d", "jsonl", "d.jsonl.gz"), tmp_path)


# --- JSON array --------------------------------------------------------------------------------------

def test_json_array_origins_are_indexes_and_gz_works(tmp_path):
    (tmp_path / "d.json").write_text(json.dumps([{"a": 1}, "oops", {"a": 3}]), encoding="utf-8-sig")
    (tmp_path / "e.json.gz").write_bytes(gzip.compress(b'[{"b": 1}]'))
    assert summary(rows(DatasetSpec("d", "json", "d.json"), tmp_path)) == [
        ("d.json[0]", {"a": 1}), ("d.json[1]", "oops"), ("d.json[2]", {"a": 3})]
    assert summary(rows(DatasetSpec("e", "json", "e.json.gz"), tmp_path)) == [("e.json.gz[0]", {"b": 1})]


def test_json_lines_in_a_json_file_get_a_hint(tmp_path):
    (tmp_path / "d.json").write_text('{"a": 1}\n{"a": 2}\n')
    with pytest.raises(UserError, match=r"d.json:2:1: invalid JSON: Extra data; .*set type to jsonl"):
        rows(DatasetSpec("d", "json", "d.json"), tmp_path)


def test_json_top_level_object_is_refused(tmp_path):
    (tmp_path / "d.json").write_text('{"data": []}')
    with pytest.raises(UserError, match="expected a top-level JSON array"):
        rows(DatasetSpec("d", "json", "d.json"), tmp_path)


# --- CSV ---------------------------------------------------------------------------------------------

def test_csv_origin_is_the_line_a_record_starts_on(tmp_path):
    (tmp_path / "d.csv").write_bytes(
        b'\xef\xbb\xbfinstruction,output\r\n'
        b'"two\nlines",a\r\n'          # record on lines 2-3
        b'bad \xff byte,b\r\n'         # line 4: invalid UTF-8
        b'three,c,extra\r\n'           # line 5: more cells than columns
        b'four,d\r\n')
    got = summary(rows(DatasetSpec("d", "csv", "d.csv"), tmp_path))
    assert got == [("d.csv:2", {"instruction": "two\nlines", "output": "a"}), ("d.csv:4", "invalid_utf8"),
                   ("d.csv:5", "wrong_type"), ("d.csv:6", {"instruction": "four", "output": "d"})]


# --- Parquet -----------------------------------------------------------------------------------------

def test_parquet_reads_batch_by_batch_with_row_origins(tmp_path, monkeypatch):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table({"instruction": [f"q{i}" for i in range(5)],
                      "messages": [[{"role": "user", "content": f"m{i}"}] for i in range(5)]})
    pq.write_table(table, tmp_path / "d.parquet", row_group_size=2)
    monkeypatch.setattr(sources, "PARQUET_BATCH_ROWS", 2)
    got = rows(DatasetSpec("d", "parquet", "d.parquet"), tmp_path)
    assert [r.origin for r in got] == [f"d.parquet[{i}]" for i in range(5)]
    assert got[4].data == {"instruction": "q4", "messages": [{"role": "user", "content": "m4"}]}


def test_corrupt_parquet_is_a_user_error(tmp_path):
    pytest.importorskip("pyarrow")
    (tmp_path / "d.parquet").write_bytes(b"PAR1 not really")
    with pytest.raises(UserError, match="d.parquet: cannot read parquet"):
        rows(DatasetSpec("d", "parquet", "d.parquet"), tmp_path)


# --- Hugging Face ------------------------------------------------------------------------------------

def test_huggingface_json_builder_on_a_local_file(tmp_path):
    pytest.importorskip("datasets")
    (tmp_path / "d.jsonl").write_text('{"instruction": "hi", "output": "hello"}\n{"instruction": "a", "output": "b"}\n')
    spec = DatasetSpec("hub", "huggingface", "json", data_files="d.jsonl")  # relative: resolved on base_dir
    got = summary(rows(spec, tmp_path))
    assert got == [("hub:json[train]#0", {"instruction": "hi", "output": "hello"}),
                   ("hub:json[train]#1", {"instruction": "a", "output": "b"})]


def test_huggingface_load_failure_is_one_line(tmp_path):
    pytest.importorskip("datasets")
    spec = DatasetSpec("hub", "huggingface", "json", data_files=str(tmp_path / "absent-*.jsonl"))
    with pytest.raises(UserError, match="dataset 'hub': data_files: '.*absent-\\*.jsonl' matches no file"):
        rows(spec, tmp_path)
    (tmp_path / "bad.jsonl").write_text("{oops\n")
    bad = DatasetSpec("hub", "huggingface", "json", data_files=str(tmp_path / "bad.jsonl"))
    with pytest.raises(UserError, match=r"dataset 'hub': (cannot load|reading hub:json\[train\]#0 failed)"):
        rows(bad, tmp_path)


# --- markdown files as rows ----------------------------------------------------------------------------

def test_markdown_files_are_text_rows(tmp_path):
    (tmp_path / "chats" / "sub").mkdir(parents=True)
    (tmp_path / "chats" / "sub" / "a.md").write_bytes(b"\xef\xbb\xbfU: hi")
    (tmp_path / "chats" / "b.md").write_bytes(b"U: \xff")
    spec = DatasetSpec("md", "markdown_transcripts", directories=["chats"],
                       participants=Participants(user=["U:"], assistant=["A:"]))
    assert summary(rows(spec, tmp_path)) == [("chats/b.md", "invalid_utf8"), ("chats/sub/a.md", {"text": "U: hi"})]
    with pytest.raises(UserError, match="directories: 'nowhere' is not a directory"):
        rows(DatasetSpec("md", "markdown_transcripts", directories=["nowhere"],
                         participants=Participants(user=["U:"], assistant=["A:"])), tmp_path)


# --- DatasetSpec checks and the schema -----------------------------------------------------------------

@pytest.mark.parametrize("kwargs, message", [
    (dict(type="xml", dataset_name="a"), "type: unknown type 'xml'"),
    (dict(type="json"), "dataset_name: missing"),
    (dict(type="json", dataset_name="a", format="chatml"), "format: unknown format"),
    (dict(type="json", dataset_name="a", format="messages", text_fields={"prompt": "q"}), "do not apply"),
    (dict(type="json", dataset_name="a", format="single_turn", text_fields={"prompt": "q"}), "needs both"),
    (dict(type="json", dataset_name="a", text_fields={"prompt": "q", "text": "t"}), "fit no single layout"),
    (dict(type="json", dataset_name="a", role_map={"bot": "robot"}), "role_map"),
    (dict(type="markdown_transcripts", directories=["d"]), "participants"),
    (dict(type="markdown_transcripts", participants=Participants(["U:"], ["A:"])), "directories: missing"),
])
def test_spec_problems_name_the_entry_and_field(kwargs, message):
    with pytest.raises(UserError, match=f"dataset 'x': .*{message}"):
        DatasetSpec("x", **kwargs)


FULL_CONFIG = {
    "name": "assistant-mix", "description": "demo", "template": "chatml", "seed": 1,
    "output_params": {"sequence_length": 1024, "shard_size": 1000, "train_ratio": 0.95, "overlong": "drop"},
    "quality_filters": {"min_prompt_length": 1, "max_prompt_length": 8000, "min_response_length": 1,
                        "max_response_length": 16000, "max_tokens": 2048, "filter_urls": False,
                        "filter_code_blocks": False, "dedupe": True, "unicode_normalization": "NFC",
                        "strip_control_chars": True},
    "mixture": {"target_ratios": {"alpaca": 0.5, "chats": 0.5}, "custom_data_ratio": 0.3},
    "train_on": "all_assistant_turns",
    "datasets": [
        {"name": "alpaca", "type": "json", "dataset_name": "data/alpaca.json", "format": "single_turn",
         "text_fields": {"prompt": "instruction", "input": "input", "response": "output"},
         "weight": 2, "max_examples": 100, "license": "CC BY-NC 4.0", "input_join": "\n"},
        {"name": "hub", "type": "huggingface", "dataset_name": "json", "split": "train",
         "data_files": {"train": ["a.jsonl"]}, "max_examples": None},
        {"name": "sg", "type": "json", "dataset_name": "sg.json", "format": "sharegpt",
         "role_map": {"bot": "assistant"}},
        {"name": "chats", "type": "markdown_transcripts", "directories": ["chats"], "domain": True,
         "participants": {"user": ["**User**:"], "assistant": ["**Assistant**:"], "ignore": ["# Tool"]},
         "use_regex": False, "case_sensitive": False, "file_glob": "*.md", "ignore_lines": ["Date: .*"]},
    ],
}


def test_full_config_validates_and_types_into_specs():
    validate(FULL_CONFIG, "sft_dataset", "cfg.json")
    specs = [from_dict(DatasetSpec, d, f"datasets[{i}].") for i, d in enumerate(FULL_CONFIG["datasets"])]
    assert specs[0].text_fields["response"] == "output" and specs[0].weight == 2
    assert specs[3].participants.ignore == ["# Tool"] and specs[3].case_sensitive is False
    assert specs[1].split == "train" and specs[1].input_join == "\n\n"  # defaults from the dataclass


@pytest.mark.parametrize("patch, message", [
    ({"datasets": []}, r"datasets: \[\] should be non-empty"),
    ({"datasets": [{"name": "a", "type": "json"}]}, "'dataset_name' is a required property"),
    ({"datasets": [{"name": "a", "type": "json", "dataset_name": "a", "weight": -1}]}, "weight"),
    ({"datasets": [{"name": "a", "type": "json", "dataset_name": "a", "colour": 1}]}, "'colour' was unexpected"),
    ({"output_params": {"sequence_length": 8}}, "sequence_length"),
    ({"output_params": {"train_ratio": 0}}, "train_ratio"),
    ({"mixture": {"target_ratios": {"a": 1.5}}}, "target_ratios"),
    ({"template": "llama"}, "template"),
])
def test_schema_rejects_bad_values_with_a_field_path(patch, message):
    with pytest.raises(UserError, match=message):
        validate({**FULL_CONFIG, **patch}, "sft_dataset", "cfg.json")


def test_every_schema_property_has_a_description():
    def walk(node, where):
        if isinstance(node, dict):
            for name, prop in node.get("properties", {}).items():
                assert prop.get("description"), f"{where}.{name} has no description"
            for key, child in node.items():
                if key != "if":  # a condition, not a declaration
                    walk(child, f"{where}.{key}")
        elif isinstance(node, list):
            for i, child in enumerate(node):
                walk(child, f"{where}[{i}]")
    schema = load_schema("sft_dataset")
    walk(schema, "schema")
    assert schema["additionalProperties"] is False and schema["$defs"]["dataset"]["additionalProperties"] is False


def test_every_dataset_field_is_in_the_schema_and_back():
    import dataclasses
    schema_fields = set(load_schema("sft_dataset")["$defs"]["dataset"]["properties"])
    assert schema_fields == {f.name for f in dataclasses.fields(DatasetSpec)}
