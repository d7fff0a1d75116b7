"""Row -> messages for every layout, the contract on what comes out, and smoke runs over the shared data."""
from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from utils.common.errors import UserError
from utils.data.conversations import Conversation, Skip, check_dataset, iter_conversations
from utils.data.dataset_entry import DatasetSpec, Participants


def run(tmp_path: Path, rows: list, **spec) -> list[Conversation | Skip]:
    """Write rows as JSONL (strings are written verbatim as lines) and read them back."""
    lines = [r if isinstance(r, str) else json.dumps(r) for r in rows]
    (tmp_path / "d.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return list(iter_conversations(DatasetSpec("src", "jsonl", "d.jsonl", **spec), tmp_path))


def msgs(*pairs: tuple[str, str]) -> tuple[dict, ...]:
    return tuple({"role": r, "content": c} for r, c in pairs)


def reasons(items: list) -> list:
    return [x.reason if isinstance(x, Skip) else "ok" for x in items]


# --- single turn -------------------------------------------------------------------------------------

def test_alpaca_dolly_and_gpteacher_rows_are_detected(tmp_path):
    got = run(tmp_path, [
        {"instruction": "Add.", "input": "2 and 3", "output": "5"},
        {"instruction": "Summarise.", "context": "Long text.", "response": "Short."},
        {"instruction": "Greet.", "input": "", "response": "Hi!"},
    ])
    assert [c.messages for c in got] == [
        msgs(("user", "Add.\n\n2 and 3"), ("assistant", "5")),
        msgs(("user", "Summarise.\n\nLong text."), ("assistant", "Short.")),
        msgs(("user", "Greet."), ("assistant", "Hi!")),
    ]
    assert got[0].source == "src" and got[0].origin == "d.jsonl:1"


def test_text_fields_system_dotted_paths_and_input_join(tmp_path):
    row = {"q": "Why?", "ctx": {"notes": ["", "because"]}, "sys": "Be brief.", "a": 42}
    fields = {"prompt": "q", "input": "ctx.notes.1", "system": "sys", "response": "a"}
    (got,) = run(tmp_path, [row], format="single_turn", text_fields=fields, input_join="\n---\n")
    assert got.messages == msgs(("system", "Be brief."), ("user", "Why?\n---\nbecause"), ("assistant", "42"))


@pytest.mark.parametrize("row, reason, detail", [
    ({"instruction": "q"}, "unknown_format", "no known layout"),
    ({"prompt": "q"}, "missing_field", "field 'response' missing"),
    ({"prompt": "q", "response": None}, "wrong_type", "is null"),
    ({"prompt": ["q"], "response": "a"}, "wrong_type", "is list"),
    ({"prompt": "q", "response": "  "}, "empty_field", "'response' is empty"),
])
def test_single_turn_bad_rows_are_skips(tmp_path, row, reason, detail):
    fields = {} if reason == "unknown_format" else {"prompt": "prompt", "response": "response"}
    (got,) = run(tmp_path, [row], text_fields=fields)
    assert isinstance(got, Skip) and got.reason == reason and detail in got.detail
    assert got.origin == "d.jsonl:1"


# --- messages ----------------------------------------------------------------------------------------

def test_messages_layout_and_its_bad_rows(tmp_path):
    good = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"},
            {"role": "assistant", "content": "A"}, {"role": "user", "content": "unanswered"}]
    got = run(tmp_path, [
        {"messages": good},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "robot", "content": "x"}]},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": None}]},
        {"messages": [{"role": "user"}]},
        {"messages": []},
        {"messages": "Q"},
        {"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"},
                      {"role": "system", "content": "late"}]},
        {"messages": [{"role": "user", "content": "Q"}]},
    ], format="messages")
    assert got[0].messages == msgs(("system", "S"), ("user", "Q"), ("assistant", "A"))
    assert reasons(got)[1:] == ["unknown_role", "wrong_type", "missing_field", "empty_conversation",
                                "wrong_type", "misplaced_system", "no_assistant_turn"]
    assert "messages[1].role is 'robot'" in got[1].detail


# --- sharegpt ----------------------------------------------------------------------------------------

def test_sharegpt_merges_same_speaker_and_trims_the_ends(tmp_path):
    conv = [{"from": "gpt", "value": "Hello, I am a bot."},        # leading assistant: dropped
            {"from": "human", "value": "Part one."}, {"from": "human", "value": "Part two."},
            {"from": "gpt", "value": "Answer."}, {"from": "gpt", "value": " "},
            {"from": "bot", "value": "More."},                    # custom role_map entry
            {"from": "human", "value": "Unanswered?"}]            # trailing user: dropped
    (got,) = run(tmp_path, [{"conversations": conv}], role_map={"bot": "assistant"})
    assert got.messages == msgs(("user", "Part one.\n\nPart two."), ("assistant", "Answer.\n\nMore."))


def test_sharegpt_unknown_speaker_and_missing_value(tmp_path):
    got = run(tmp_path, [{"conversations": [{"from": "narrator", "value": "x"}]},
                         {"conversations": [{"from": "human"}]},
                         {"conversations": [{"from": ["human"], "value": "x"}, None]},
                         {"conversations": [{"from": "system", "value": "S"}, {"from": "human", "value": "Q"},
                                            {"from": "GPT", "value": "A"}]}], format="sharegpt")
    assert reasons(got) == ["unknown_role", "missing_field", "unknown_role", "ok"]
    assert "add it to role_map" in got[0].detail
    assert got[3].messages == msgs(("system", "S"), ("user", "Q"), ("assistant", "A"))


# --- transcript ----------------------------------------------------------------------------------------

def test_hh_transcripts(tmp_path):
    chosen = "\n\nHuman: What is 2+2?\n\nAssistant: 4.\n\nHuman: And 3+3?\n\nAssistant: 6, as Human: says."
    got = run(tmp_path, [{"chosen": chosen, "rejected": "x"}, {"chosen": "no markers"},
                         {"chosen": "\n\nHuman: Hi\n\nAssistant:"}], text_fields={"text": "chosen"})
    assert got[0].messages == msgs(("user", "What is 2+2?"), ("assistant", "4."), ("user", "And 3+3?"),
                                   ("assistant", "6, as Human: says."))
    assert reasons(got)[1:] == ["no_conversation_found", "no_assistant_turn"]


def test_transcript_detection_and_other_markers(tmp_path):
    (got,) = run(tmp_path, [{"text": "Human: hi\nAssistant: hello"}])
    assert got.messages == msgs(("user", "hi"), ("assistant", "hello"))
    (got,) = run(tmp_path, [{"text": "System: be kind\nUser: hi\nAI: hello"}], format="transcript")
    assert got.messages == msgs(("system", "be kind"), ("user", "hi"), ("assistant", "hello"))


# --- malformed lines, streaming, limits ---------------------------------------------------------------

def test_malformed_lines_become_skips_with_file_and_line(tmp_path):
    ok = json.dumps({"instruction": "q", "output": "a"}).encode()
    (tmp_path / "d.jsonl").write_bytes(b"\xef\xbb\xbf" + ok + b"\r\n" + b"{bad json\n" + b'{"instruction": "\xfe"}\n'
                                       + ok[:-1] + b'\x00}\n' + b'"a string"\n' + b'null\n' + ok + b"\r\n")
    got = list(iter_conversations(DatasetSpec("src", "jsonl", "d.jsonl"), tmp_path))
    assert [(x.origin, reasons([x])[0]) for x in got] == [
        ("d.jsonl:1", "ok"), ("d.jsonl:2", "invalid_json"), ("d.jsonl:3", "invalid_utf8"),
        ("d.jsonl:4", "nul_byte"), ("d.jsonl:5", "wrong_type"), ("d.jsonl:6", "wrong_type"), ("d.jsonl:7", "ok")]


def test_max_examples_counts_conversations_and_stops_early(tmp_path):
    rows = ["{bad"] + [{"instruction": f"q{i}", "output": "a"} for i in range(10)]
    got = run(tmp_path, rows, max_examples=3)
    assert reasons(got) == ["invalid_json", "ok", "ok", "ok"]
    assert run(tmp_path, rows, max_examples=0) == []


def test_oasst_looking_rows_in_auto_mode_point_to_the_format(tmp_path):
    (got,) = run(tmp_path, [{"message_id": "a", "parent_id": None, "text": "hi", "role": "prompter"}])
    assert got.reason == "unknown_format" and "set format to oasst" in got.detail


# --- oasst -------------------------------------------------------------------------------------------

def oasst(mid, parent, role, text, rank=None, deleted=False, created="2023"):
    return {"message_id": mid, "parent_id": parent, "role": role, "text": text, "rank": rank,
            "deleted": deleted, "created_date": created, "lang": "en"}


def test_oasst_follows_the_best_ranked_live_reply(tmp_path):
    rows = [
        oasst("r1", None, "prompter", "Root question"),
        oasst("a2", "r1", "assistant", "second best", rank=1),
        oasst("a1", "r1", "assistant", "best", rank=0),
        oasst("a0", "r1", "assistant", "deleted best", rank=0, deleted=True, created="2022"),
        oasst("p1", "a1", "prompter", "follow-up late", created="2024"),
        oasst("p0", "a1", "prompter", "follow-up early", created="2023"),
        oasst("b1", "p0", "assistant", "unranked reply"),
        oasst("r2", None, "prompter", "Unanswered root"),
        oasst("x1", "missing", "assistant", "orphan"),
        oasst("r3", None, "prompter", "Deleted root", deleted=True),
        {"message_id": "bad", "parent_id": None, "role": "moderator", "text": "?"},
        "{not json",
    ]
    got = run(tmp_path, rows, format="oasst")
    assert [(x.origin, reasons([x])[0]) for x in got] == [
        ("d.jsonl:11", "unknown_role"), ("d.jsonl:12", "invalid_json"), ("d.jsonl:1", "ok"),
        ("d.jsonl:8", "no_assistant_turn"), ("d.jsonl:9", "orphan_message"), ("d.jsonl:10", "deleted")]
    assert got[2].messages == msgs(("user", "Root question"), ("assistant", "best"),
                                   ("user", "follow-up early"), ("assistant", "unranked reply"))


# --- markdown through iter_conversations ---------------------------------------------------------------

def test_markdown_entries_report_files_without_a_conversation(tmp_path):
    (tmp_path / "chats").mkdir()
    (tmp_path / "chats" / "a.md").write_text("# Notes\n**Me**: hi\n**Bot**: hello\n")
    (tmp_path / "chats" / "b.md").write_text("just notes\n")
    (tmp_path / "chats" / "c.md").write_text("**Me**: hi\n**Me**: anyone?\n")
    spec = DatasetSpec("md", "markdown_transcripts", directories=["chats"],
                       participants=Participants(user=["**Me**:"], assistant=["**Bot**:"]))
    got = list(iter_conversations(spec, tmp_path))
    assert [(x.origin, reasons([x])[0]) for x in got] == [
        ("chats/a.md", "ok"), ("chats/b.md", "no_conversation_found"), ("chats/c.md", "single_role")]
    assert got[0].messages == msgs(("user", "hi"), ("assistant", "hello"))


def test_check_dataset_fails_fast_on_config_problems(tmp_path):
    (tmp_path / "chats").mkdir()
    (tmp_path / "chats" / "a.md").write_text("U: q\nA: a")
    with pytest.raises(UserError, match=r"dataset 'md': ignore_lines: '\(x': invalid regex"):
        check_dataset(DatasetSpec("md", "markdown_transcripts", directories=["chats"], ignore_lines=["(x"],
                                  participants=Participants(user=["U:"], assistant=["A:"])), tmp_path)
    with pytest.raises(UserError, match="dataset 'j': dataset_name: 'x.jsonl' not found"):
        check_dataset(DatasetSpec("j", "jsonl", "x.jsonl"), tmp_path)


# --- real data -----------------------------------------------------------------------------------------

REAL = [  # (spec, minimum conversations, maximum skips)
    (DatasetSpec("alpaca_tiny", "json", "instruct/alpaca_original_first100/alpaca_tiny.json"), 100, 0),
    (DatasetSpec("code_alpaca_2k", "json", "instruct/code_alpaca_2k/code_alpaca_2k.json"), 2000, 5),
    (DatasetSpec("gpteacher", "json", "instruct/gpteacher"), 14000, 0),
    (DatasetSpec("alpaca_en_demo", "json", "instruct/llamafactory_alpaca_en_demo/alpaca_en_demo.json"), 999, 0),
    (DatasetSpec("self_instruct_seed", "jsonl", "instruct/self_instruct_seed_tasks/seed_tasks.jsonl",
                 format="single_turn", text_fields={"prompt": "instruction", "input": "instances.0.input",
                                                    "response": "instances.0.output"}), 175, 0),
    (DatasetSpec("hh_harmless_chosen", "jsonl", "chat/hh_rlhf_harmless_base_test/test.jsonl.gz",
                 format="transcript", text_fields={"text": "chosen"}), 2300, 10),
    (DatasetSpec("fastchat_dummy", "json", "chat/fastchat_dummy_conversation/dummy_conversation.json",
                 format="sharegpt"), 500, 0),
    (DatasetSpec("oasst1_en_val", "jsonl", "chat/oasst1_en_validation/en-validation.jsonl", format="oasst"), 180, 5),
    (DatasetSpec("sharegpt_v3", "json", "chat/sharegpt_v3_subset/sharegpt_v3_first1000.json",
                 format="sharegpt"), 950, 30),
]


@pytest.mark.parametrize("spec, least, most_skips", REAL, ids=[s.name for s, _, _ in REAL])
def test_shared_datasets(shared_data, spec, least, most_skips):
    counts = Counter()
    for item in iter_conversations(spec, shared_data):
        counts["conversations" if isinstance(item, Conversation) else item.reason] += 1
        if isinstance(item, Conversation):
            assert item.messages[-1]["role"] == "assistant" and item.source == spec.name
    print(f"\n{spec.name}: {dict(counts)}")
    assert counts["conversations"] >= least
    assert sum(counts.values()) - counts["conversations"] <= most_skips
