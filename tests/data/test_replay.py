"""Replay sources (``format: text``): raw text as SFT data, every token supervised, chunked, weighted."""
from __future__ import annotations

import json

import pytest

from scripts_loader import load_script
from utils.common.errors import run_cli
from utils.common.labels import IGNORE
from shard_helpers import shard_examples
from utils.data.tokenizer import load_tokenizer

SEQ = 64


@pytest.fixture(scope="module")
def script():
    return load_script("02_prepare_sft_corpus")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("replay_data")
    chats = [{"messages": [{"role": "user", "content": f"Name a number after {i}."},
                           {"role": "assistant", "content": f"{i + 1}"}]} for i in range(80)]
    (d / "chat.jsonl").write_text("".join(json.dumps(c) + "\n" for c in chats), encoding="utf-8")
    books = d / "books"
    books.mkdir()
    for i in range(6):  # long documents: several chunks each
        text = " ".join(f"The river {i} runs past mill {j} and turns its wheel." for j in range(40))
        (books / f"book{i}.txt").write_text(text + "\n", encoding="utf-8")
    (books / "control.txt").write_text("Plain text that spells <|im_end|> and <|im_start|>user stays text.\n")
    rows = [{"body": f"Note {i}: the garden has {i} trees.", "id": i} for i in range(20)]
    rows.insert(3, {"id": "no body"})
    (d / "notes.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return d


def prepare(script, tmp_path, data_dir, tokenizer, **mixture):
    config = {
        "name": "replay", "template": "chatml",
        "output_params": {"sequence_length": SEQ, "shard_size": 50, "train_ratio": 1.0},
        "datasets": [
            {"name": "chat", "type": "jsonl", "dataset_name": str(data_dir / "chat.jsonl")},
            {"name": "books", "type": "text_files", "dataset_name": str(data_dir / "books")},
            {"name": "notes", "type": "jsonl", "format": "text", "text_fields": {"text": "body"},
             "dataset_name": str(data_dir / "notes.jsonl")},
        ],
        **({"mixture": mixture} if mixture else {}),
    }
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    out = tmp_path / "out"
    assert run_cli(script.main, ["--config", str(path), "--output_dir", str(out), "--tokenizer_path",
                                 str(tokenizer), "--num_proc", "1"]) == 0
    return out, json.loads((out / "manifest.json").read_text())


def test_every_token_of_replay_text_is_supervised_and_chunks_fit(tmp_path, data_dir, toy_tokenizer_dir,
                                                                 script):
    out, manifest = prepare(script, tmp_path, data_dir, toy_tokenizer_dir)
    tok = load_tokenizer(str(toy_tokenizer_dir))
    by_source = {}
    for ex in shard_examples(out, "train"):
        by_source.setdefault(ex["source"], []).append(ex)
    for name in ("books", "notes"):
        for ex in by_source[name]:
            ids, labels = ex["input_ids"], ex["labels"]
            assert 2 <= len(ids) <= SEQ
            assert labels[0] == IGNORE and labels[1:] == ids[1:]
    # a 40-sentence book is several chunks, and its chunks put back together are the document plus EOS
    book = (data_dir / "books" / "book0.txt").read_text()
    want = tok(book, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    chunks = [ex["input_ids"] for ex in by_source["books"]]
    starts = [i for i, c in enumerate(chunks) if c == want[:len(c)]]
    assert starts, "the first chunk of book0 is missing"
    rebuilt = [t for c in chunks[starts[0]:starts[0] + -(-len(want) // SEQ)] for t in c]
    assert rebuilt == want and len(want) > 2 * SEQ
    # chat examples keep their loss mask: the prompt is never supervised
    assert all(ex["labels"][0] == IGNORE and IGNORE in ex["labels"][1:] for ex in by_source["chat"])
    assert manifest["sources"]["notes"]["skipped_by_reason"] == {"missing_field": 1}
    assert manifest["sources"]["books"]["supervised_tokens_train"] == sum(len(c) - 1 for c in chunks)


def test_replay_text_never_becomes_control_tokens(tmp_path, data_dir, toy_tokenizer_dir, script):
    out, _ = prepare(script, tmp_path, data_dir, toy_tokenizer_dir)
    tok = load_tokenizer(str(toy_tokenizer_dir))
    special = set(tok.all_special_ids) - {tok.eos_token_id}
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    for ex in shard_examples(out, "train"):
        if ex["source"] != "chat":
            assert not special & set(ex["input_ids"]) and im_end not in ex["input_ids"]


def test_replay_is_weighted_like_any_source(tmp_path, data_dir, toy_tokenizer_dir, script):
    _, plain = prepare(script, tmp_path / "a", data_dir, toy_tokenizer_dir)
    _, mixed = prepare(script, tmp_path / "b", data_dir, toy_tokenizer_dir,
                       target_ratios={"chat": 0.9, "books": 0.05, "notes": 0.05})
    written = {n: s["written_train"] for n, s in mixed["sources"].items()}
    total = sum(written.values())
    assert abs(written["chat"] / total - 0.9) < 0.02
    assert abs(written["books"] / total - 0.05) < 0.02
    assert plain["sources"]["books"]["written_train"] != written["books"] and mixed["sources"]["books"]["replay"]
