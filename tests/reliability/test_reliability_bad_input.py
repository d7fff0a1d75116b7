"""Reliability: malformed input to the prepare stage (02) ends in a counted skip or one clear error line.

Row-level damage (bad JSON, wrong types, odd encodings, nesting 10^5 deep, 10 MB lines, ...) is one source per
case in one corpus, prepared by the real CLI in a subprocess with 2 worker processes: exit 0, no traceback,
each case counted under its reason in manifest.json. File- and config-level damage (unreadable files, bad
regexes, empty directories, a file that disappears mid-run, ...) runs 02's main() in process, a few through
the real CLI too: exit 2, exactly one ``error:`` line, and no output directory, not even a temp one.
"""
from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

from reliability_helpers import ROOT, script, write_json
from utils.common.errors import run_cli

GOOD = {"messages": [{"role": "user", "content": "What is 1 plus 1?"}, {"role": "assistant", "content": "2."}]}
NESTED = b"[" * 100_000 + b"]" * 100_000
BIG = 10_000_000


def row(*turns, **extra) -> bytes:
    return json.dumps({"messages": [{"role": r, "content": c} for r, c in turns], **extra}).encode()


def line(data) -> bytes:
    return json.dumps(data).encode()


UA = (("user", "Hi there"), ("assistant", "Hello!"))

# id -> (file bytes, extra dataset-entry fields, expected outcome: skip/drop reason, or "kept")
ROW_CASES: dict[str, tuple[bytes, dict, str]] = {
    "invalid_json": (b"{not json", {}, "skip:invalid_json"),
    "truncated_line": (row(*UA)[:-7], {}, "skip:invalid_json"),
    "truncated_file_no_newline": (b'{"messages": [{"role": "user", "cont', {}, "skip:invalid_json"),
    "trailing_garbage": (row(*UA) + b" x", {}, "skip:invalid_json"),
    "single_quotes": (b"{'messages': []}", {}, "skip:invalid_json"),
    "number_5000_digits": (b'{"messages": ' + b"7" * 5000 + b"}", {}, "skip:invalid_json"),
    "lists_nested_1e5": (NESTED, {}, "skip:invalid_json"),
    "objects_nested_1e5": (b'{"a":' * 100_000 + b"1" + b"}" * 100_000, {}, "skip:invalid_json"),
    "messages_nested_1e5": (b'{"messages": ' + NESTED + b"}", {}, "skip:invalid_json"),
    "invalid_utf8": (row(*UA).replace(b"Hi", b"H\xff\xfe"), {}, "skip:invalid_utf8"),
    "overlong_utf8": (row(*UA).replace(b"Hi", b"H\xc0\xaf"), {}, "skip:invalid_utf8"),
    "surrogate_bytes": (row(*UA).replace(b"Hi", b"H\xed\xa0\x80"), {}, "skip:invalid_utf8"),
    "surrogate_escape": (row(*UA).replace(b"Hi", b"H\\ud83d"), {}, "skip:invalid_utf8"),
    "nul_byte_raw": (row(*UA).replace(b"Hi", b"H\x00i"), {}, "skip:nul_byte"),
    "nul_escape_is_cleaned": (row(("user", "Hi\u0000 nul"), ("assistant", "Hello!")), {}, "kept"),
    "bom_first_line": (b"\xef\xbb\xbf" + row(("user", "Hi bom"), ("assistant", "Hello!")), {}, "kept"),
    "bom_later_line": (b"\n" + b"\xef\xbb\xbf" + row(*UA), {}, "skip:invalid_json"),
    "crlf": (row(("user", "Hi crlf"), ("assistant", "Hello!")) + b"\r\n\r\n", {}, "kept"),
    "raw_control_char_in_string": (row(*UA).replace(b"Hi", b"H\ri"), {}, "skip:invalid_json"),
    "blank_lines_only": (b"\n  \n\t\n", {}, "nothing"),
    "empty_file": (b"", {}, "nothing"),
    "top_level_array": (b"[1, 2]", {}, "skip:wrong_type"),
    "top_level_string": (b'"hello"', {}, "skip:wrong_type"),
    "top_level_null": (b"null", {}, "skip:wrong_type"),
    "top_level_number": (b"3.5", {}, "skip:wrong_type"),
    "empty_object": (b"{}", {}, "skip:unknown_format"),
    "messages_null": (b'{"messages": null}', {"format": "messages"}, "skip:wrong_type"),
    "messages_string": (b'{"messages": "hi"}', {"format": "messages"}, "skip:wrong_type"),
    "messages_empty": (b'{"messages": []}', {}, "skip:empty_conversation"),
    "message_not_object": (b'{"messages": ["hi", "there"]}', {}, "skip:wrong_type"),
    "content_missing": (line({"messages": [{"role": "user"}, {"role": "assistant", "content": "x"}]}), {},
                        "skip:missing_field"),
    "content_null": (line({"messages": [{"role": "user", "content": None}]}), {}, "skip:wrong_type"),
    "content_number": (line({"messages": [{"role": "user", "content": 7}]}), {}, "skip:wrong_type"),
    "content_parts_list": (line({"messages": [{"role": "user", "content": [{"type": "text"}]}]}), {},
                           "skip:wrong_type"),
    "content_nan": (b'{"messages": [{"role": "user", "content": NaN}]}', {}, "skip:wrong_type"),
    "role_missing": (line({"messages": [{"content": "hi"}]}), {}, "skip:unknown_role"),
    "role_unknown": (row(("robot", "beep"), ("assistant", "x")), {}, "skip:unknown_role"),
    "role_list": (line({"messages": [{"role": ["user"], "content": "hi"}]}), {}, "skip:unknown_role"),
    "only_user_turns": (row(("user", "a"), ("user", "b")), {}, "skip:no_assistant_turn"),
    "only_assistant_turns": (row(("assistant", "a"), ("assistant", "b")), {}, "skip:no_assistant_turn"),
    "only_system": (row(("system", "be nice")), {}, "skip:no_assistant_turn"),
    "whitespace_contents": (row(("user", "  \n"), ("assistant", "\t")), {}, "skip:empty_conversation"),
    "system_after_start": (row(*UA, ("system", "late")), {}, "skip:misplaced_system"),
    "duplicate_keys_last_wins": (b'{"messages": [], "messages": "x"}', {}, "skip:unknown_format"),
    "reserved_anchor_char": (row(("user", "Hi \U0010fffd"), ("assistant", "x")), {}, "drop:template_error"),
    "line_10mb_invalid": (b'{"messages": "' + b"x" * BIG, {}, "skip:invalid_json"),
    "line_10mb_no_answer": (row(("user", "x" * BIG)), {}, "skip:no_assistant_turn"),
    "line_10mb_wrong_type": (line({"messages": [{"role": "user", "content": ["x" * BIG]}]}), {},
                             "skip:wrong_type"),
    "sharegpt_unknown_speaker": (line({"conversations": [{"from": "bot9", "value": "x"}]}), {},
                                 "skip:unknown_role"),
    "sharegpt_from_number": (line({"conversations": [{"from": 3, "value": "x"}]}), {}, "skip:unknown_role"),
    "sharegpt_value_null": (line({"conversations": [{"from": "human", "value": None}]}), {}, "skip:wrong_type"),
    "alpaca_instruction_null": (line({"instruction": None, "output": "x"}), {}, "skip:wrong_type"),
    "alpaca_output_empty": (line({"instruction": "Say hi", "output": " "}), {}, "skip:empty_field"),
    "alpaca_output_object": (line({"instruction": "Say hi", "output": {"a": 1}}), {}, "skip:wrong_type"),
    "oasst_parent_list": (line({"message_id": "a", "parent_id": ["x"], "role": "prompter", "text": "hi"}),
                          {"format": "oasst"}, "skip:wrong_type"),
    "oasst_role_list": (line({"message_id": "a", "role": ["prompter"], "text": "hi"}), {"format": "oasst"},
                        "skip:unknown_role"),
    "oasst_text_missing": (line({"message_id": "a", "role": "prompter"}), {"format": "oasst"},
                           "skip:missing_field"),
    "oasst_orphan": (line({"message_id": "b", "parent_id": "zz", "role": "assistant", "text": "x"}),
                     {"format": "oasst"}, "skip:orphan_message"),
}
CSV_CASES: dict[str, tuple[bytes, dict, str]] = {
    "csv_invalid_utf8": (b"instruction,output\nSay \xff,hi\n", {}, "skip:invalid_utf8"),
    "csv_nul": (b"instruction,output\nSay\x00,hi\n", {}, "skip:nul_byte"),
    "csv_extra_cells": (b"instruction,output\nSay,hi,extra\n", {}, "skip:wrong_type"),
    "csv_missing_column": (b"instruction\nSay hi\n", {}, "skip:unknown_format"),
}
MARKDOWN_CASES: dict[str, tuple[bytes, dict, str]] = {
    "md_invalid_utf8": (b"**User**: hi \xff\n**Assistant**: yo\n", {}, "skip:invalid_utf8"),
    "md_one_role": (b"**User**: hi\n**User**: again\n", {}, "skip:single_role"),
    "md_no_marker": (b"# Notes\nnothing here\n", {}, "skip:no_conversation_found"),
    "md_nul_bytes_cleaned": (b"**User**: h\x00i\n**Assistant**: yo\n", {}, "kept"),
}
ALL_CASES = {**ROW_CASES, **CSV_CASES, **MARKDOWN_CASES}


def entry(base: Path, name: str, content: bytes, extra: dict) -> dict:
    if name in MARKDOWN_CASES:
        folder = base / name
        folder.mkdir()
        (folder / "chat.md").write_bytes(content)
        return {"name": name, "type": "markdown_transcripts", "directories": [str(folder)],
                "participants": {"user": ["**User**:"], "assistant": ["**Assistant**:"]}, **extra}
    kind = "csv" if name in CSV_CASES else "jsonl"
    path = base / f"{name}.{kind}"
    path.write_bytes(content)
    return {"name": name, "type": kind, "dataset_name": str(path), **extra}


def good_entry(base: Path) -> dict:
    path = base / "good.jsonl"
    path.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"What is {i} plus 1?"},
                                                     {"role": "assistant", "content": f"{i + 1}."}]}) + "\n"
                            for i in range(20)))
    return {"name": "good", "type": "jsonl", "dataset_name": str(path)}


def config(base: Path, *entries: dict, **overrides) -> Path:
    data = {"name": "bad", "template": "chatml", "output_params": {"sequence_length": 64, "train_ratio": 0.9},
            "datasets": [good_entry(base), *entries], **overrides}
    return write_json(base / "config.json", data)


def assert_no_output(out: Path) -> None:
    assert not out.exists(), f"{out} was left behind"
    assert not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")], "a temp dir was left"


@pytest.mark.e2e
def test_every_malformed_row_is_a_counted_skip_through_the_real_cli(tmp_path, toy_tokenizer_dir):
    assert len(ALL_CASES) >= 50
    base = tmp_path / "in"
    base.mkdir()
    cfg = config(base, *[entry(base, name, content, extra) for name, (content, extra, _) in ALL_CASES.items()])
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/02_prepare_sft_corpus.py"), "--config", str(cfg),
                           "--output_dir", str(out), "--tokenizer_path", str(toy_tokenizer_dir), "--num_proc", "2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert "malformed:invalid_json" in proc.stdout
    sources = json.loads((out / "manifest.json").read_text())["sources"]
    wrong = {}
    for name, (_, _, expected) in ALL_CASES.items():
        got = sources[name]
        kept = got["kept_train"] + got["kept_val"]
        outcome = ("nothing" if got["read"] == 0 else "kept" if kept else
                   ";".join([f"skip:{r}" for r in got["skipped_by_reason"]] +
                            [f"drop:{r}" for r in got["dropped_by_reason"]]))
        if outcome != expected:
            wrong[name] = outcome
    assert not wrong, f"unexpected outcomes: {wrong}"
    state = json.loads((out / "training_state.json").read_text())
    assert {r["origin"].rsplit("/", 1)[-1] for r in state["skipped_rows"]} >= {
        "invalid_json.jsonl:1", "bom_later_line.jsonl:2", "lists_nested_1e5.jsonl:1"}


def _vanish(monkeypatch, reader: str, victim: Path) -> None:
    """``reader`` deletes ``victim`` once it has read the first row of a file beside it (listed already)."""
    import utils.data.sources as sources

    original = getattr(sources, reader)

    def read(path, shown):
        for item in original(path, shown):
            if path.parent == victim.parent and path != victim and victim.exists():
                victim.unlink()
            yield item

    monkeypatch.setattr(sources, reader, read)


FILE_CASES = {  # id -> (make(base) -> dataset entry or config overrides, expected message part)
    "gz_truncated": "cannot read",
    "gz_not_gzip": "cannot read",
    "json_truncated": "invalid JSON:",
    "json_object": "expected a top-level JSON array of rows, got dict",
    "json_nested_1e5": "cannot parse JSON (nested too deeply)",
    "json_number_5000_digits": "cannot parse JSON (ValueError: Exceeds the limit",
    "json_invalid_utf8": "not UTF-8 text",
    "json_empty": "invalid JSON: Expecting value",
    "parquet_corrupt": "cannot read parquet",
    "empty_directory": "matches no .jsonl/.jsonl.gz file",
    "directory_without_matches": "matches no .jsonl/.jsonl.gz file",
    "missing_path": "not found (relative to",
    "glob_matching_nothing": "matches no .jsonl/.jsonl.gz file",
    "markdown_empty_directory": "no file matches file_glob",
    "markdown_not_a_directory": "is not a directory",
    "regex_invalid": "invalid regex",
    "regex_nested_repeat": "nested repetition",
    "regex_ambiguous_alternation": "repeated alternation whose branches can start alike",
    "regex_polynomial": "4 open-ended repetitions",
    "regex_matches_empty_line": "matches an empty line",
    "ignore_lines_catastrophic": "nested repetition",
    "all_rows_bad": "no training example left: every row was malformed (invalid_json 2); fix the files and rows",
    "vanishing_jsonl": "cannot read",
    "vanishing_csv": "cannot read (No such file or directory)",
    "vanishing_markdown": "cannot read (No such file or directory)",
}


def make_file_case(case: str, base: Path, monkeypatch) -> dict:
    md = {"name": "md", "type": "markdown_transcripts", "directories": [str(base / "md")],
          "participants": {"user": ["U:"], "assistant": ["A:"]}}
    (base / "md").mkdir()
    (base / "md" / "a.md").write_text("U: hi\nA: yo\n")
    files = {"gz_truncated": ("x.jsonl.gz", gzip.compress(row(*UA) * 50)[:-20]),
             "gz_not_gzip": ("x.jsonl.gz", row(*UA)),
             "json_truncated": ("x.json", b'[{"instruction": "a", "output": "b"}, {"instr'),
             "json_object": ("x.json", b'{"instruction": "a"}'),
             "json_nested_1e5": ("x.json", NESTED),
             "json_number_5000_digits": ("x.json", b"[" + b"9" * 5000 + b"]"),
             "json_invalid_utf8": ("x.json", b'[{"instruction": "\xff"}]'),
             "json_empty": ("x.json", b""),
             "parquet_corrupt": ("x.parquet", b"PAR1 this is not parquet PAR1")}
    if case in files:
        name, content = files[case]
        (base / name).write_bytes(content)
        kind = name.split(".")[1]
        return {"datasets": [{"name": "x", "type": kind, "dataset_name": str(base / name)}]}
    if case == "empty_directory":
        (base / "empty").mkdir()
        return {"datasets": [{"name": "x", "type": "jsonl", "dataset_name": str(base / "empty")}]}
    if case == "directory_without_matches":
        (base / "other").mkdir()
        (base / "other" / "notes.txt").write_text("hi")
        return {"datasets": [{"name": "x", "type": "jsonl", "dataset_name": str(base / "other")}]}
    if case == "missing_path":
        return {"datasets": [{"name": "x", "type": "jsonl", "dataset_name": str(base / "nope.jsonl")}]}
    if case == "glob_matching_nothing":
        return {"datasets": [{"name": "x", "type": "jsonl", "dataset_name": str(base / "nothing-*.jsonl")}]}
    if case == "markdown_empty_directory":
        (base / "empty").mkdir()
        return {"datasets": [{**md, "directories": [str(base / "empty")]}]}
    if case == "markdown_not_a_directory":
        return {"datasets": [{**md, "directories": [str(base / "md" / "a.md")]}]}
    regexes = {"regex_invalid": "**U(**:", "regex_nested_repeat": r"(\w+\s?)*:",
               "regex_ambiguous_alternation": r"(a|ab)*:", "regex_polynomial": r".*.*.*.*:",
               "regex_matches_empty_line": r"\s*"}
    if case in regexes:
        return {"datasets": [{**md, "use_regex": True, "participants": {"user": ["U:"],
                                                                        "assistant": [regexes[case]]}}]}
    if case == "ignore_lines_catastrophic":
        return {"datasets": [{**md, "ignore_lines": ["(x+x+)+y"]}]}
    if case == "all_rows_bad":
        (base / "bad.jsonl").write_bytes(b"{oops\n" + NESTED + b"\n")
        return {"datasets": [{"name": "x", "type": "jsonl", "dataset_name": str(base / "bad.jsonl")}]}
    kind = case.removeprefix("vanishing_")
    folder = base / "many"
    folder.mkdir()
    ext = {"jsonl": "jsonl", "csv": "csv", "markdown": "md"}[kind]
    content = {"jsonl": row(*UA) * 1, "csv": b"instruction,output\nSay hi,hi\n", "markdown": b"U: hi\nA: yo\n"}
    for stem in ("a", "b"):
        (folder / f"{stem}.{ext}").write_bytes(content[kind] + (b"\n" if kind == "jsonl" else b""))
    reader = {"jsonl": "read_jsonl", "csv": "read_csv", "markdown": "read_text_file"}[kind]
    _vanish(monkeypatch, reader, folder / f"b.{ext}")
    if kind == "markdown":
        return {"datasets": [{**md, "directories": [str(folder)]}]}
    return {"datasets": [{"name": "x", "type": kind, "dataset_name": str(folder)}]}


@pytest.mark.parametrize("case", sorted(FILE_CASES))
def test_unreadable_files_and_bad_config_are_one_line_and_leave_no_output(case, tmp_path, toy_tokenizer_dir,
                                                                          monkeypatch, capsys):
    base = tmp_path / "in"
    base.mkdir()
    overrides = make_file_case(case, base, monkeypatch)
    extra = overrides.pop("datasets")
    data = {"name": "bad", "template": "chatml", "output_params": {"sequence_length": 64, "train_ratio": 0.9},
            "datasets": ([] if case == "all_rows_bad" else [good_entry(base)]) + extra}
    cfg = write_json(base / "config.json", data)
    out = tmp_path / "out"
    code = run_cli(script("02_prepare_sft_corpus").main, ["--config", str(cfg), "--output_dir", str(out),
                                                          "--tokenizer_path", str(toy_tokenizer_dir),
                                                          "--num_proc", "1"])
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert FILE_CASES[case] in lines[0]
    assert_no_output(out)


@pytest.mark.e2e
@pytest.mark.parametrize("case", ["json_nested_1e5", "regex_ambiguous_alternation", "gz_truncated"])
def test_the_real_cli_refuses_with_one_line(case, tmp_path, toy_tokenizer_dir, monkeypatch):
    base = tmp_path / "in"
    base.mkdir()
    data = {"name": "bad", "template": "chatml", "output_params": {"sequence_length": 64},
            "datasets": [good_entry(base), *make_file_case(case, base, monkeypatch)["datasets"]]}
    cfg = write_json(base / "config.json", data)
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/02_prepare_sft_corpus.py"), "--config", str(cfg),
                           "--output_dir", str(out), "--tokenizer_path", str(toy_tokenizer_dir), "--num_proc", "2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("error: ") and FILE_CASES[case] in lines[0]
    assert_no_output(out)


def test_a_config_nested_1e5_deep_or_with_a_huge_number_is_one_line(tmp_path, toy_tokenizer_dir, capsys):
    for content, message in ((NESTED, "cannot parse JSON (nested too deeply)"),
                             (b'{"name": ' + b"1" * 5000 + b"}", "cannot parse JSON (Exceeds the limit")):
        cfg = tmp_path / "config.json"
        cfg.write_bytes(content)
        code = run_cli(script("02_prepare_sft_corpus").main, ["--config", str(cfg), "--output_dir",
                                                              str(tmp_path / "out"), "--tokenizer_path",
                                                              str(toy_tokenizer_dir)])
        lines = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(lines) == 1 and lines[0].startswith(f"error: {cfg}: {message}"), lines
        assert_no_output(tmp_path / "out")
