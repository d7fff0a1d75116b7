"""The prepare stage end to end: CLI, determinism, mixture, splits, strictness, atomic output."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from paths import ROOT
from scripts_loader import load_script
from utils.common.errors import run_cli
from utils.data.fingerprint import tokenizer_fingerprint
from utils.data.mixture import MixtureConfig, repeats, solve_multipliers, split_of
from shard_helpers import shard_examples
from utils.data.shards import verify_data_dir

SCRIPT = ROOT / "scripts" / "02_prepare_sft_corpus.py"
TOPICS = ["apple", "river", "piano", "cloud", "garden", "pencil", "train", "mountain", "coffee", "window"]


@pytest.fixture(scope="module")
def script():
    return load_script("02_prepare_sft_corpus")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """A chat JSONL (with a bad line, a duplicate, a URL and a long multi-turn row), an Alpaca JSON
    array and two markdown transcripts."""
    d = tmp_path_factory.mktemp("sft_data")
    lines = []
    for i in range(60):
        topic = TOPICS[i % len(TOPICS)]
        lines.append(json.dumps({"messages": [{"role": "user", "content": f"Tell me about {topic} number {i}."},
                                              {"role": "assistant", "content": f"The {topic} {i} is fine."}]}))
    lines.insert(5, "{not json")
    lines.append(lines[0])  # duplicate
    lines.append(json.dumps({"messages": [{"role": "user", "content": "Link?"},
                                          {"role": "assistant", "content": "See https://example.com/x"}]}))
    long_turns = [{"role": "user", "content": "Count."}, {"role": "assistant", "content": "One."},
                  {"role": "user", "content": "More."}, {"role": "assistant", "content": "two " * 300}]
    lines.append(json.dumps({"messages": long_turns}))
    (d / "chat.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    rows = [{"instruction": f"Reverse the list [{i}, {i + 1}]", "input": "", "output": f"[{i + 1}, {i}]"}
            for i in range(30)]
    (d / "alpaca.json").write_text(json.dumps(rows), encoding="utf-8")
    md = d / "chats"
    md.mkdir()
    for i in range(3):
        (md / f"chat{i}.md").write_text(f"**User**: How is task {i}?\n\n**Assistant**: Task {i} is done.\n")
    return d


def make_config(tmp_path, data_dir, **overrides):
    config = {
        "name": "t", "template": "chatml",
        "output_params": {"sequence_length": 128, "shard_size": 16, "train_ratio": 0.8, "overlong": "truncate"},
        "quality_filters": {"filter_urls": True},
        "datasets": [
            {"name": "chat", "type": "jsonl", "dataset_name": str(data_dir / "chat.jsonl"), "license": "MIT"},
            {"name": "alpaca", "type": "json", "dataset_name": str(data_dir / "alpaca.json")},
            {"name": "notes", "type": "markdown_transcripts", "directories": [str(data_dir / "chats")],
             "participants": {"user": ["**User**:"], "assistant": ["**Assistant**:"]}, "domain": True},
        ],
        "seed": 1,
    }
    config.update(overrides)
    path = tmp_path / f"config_{len(list(tmp_path.glob('config_*')))}.json"
    path.write_text(json.dumps(config), encoding="utf-8")
    return path


def run(script, config, out, tokenizer, *extra):
    return run_cli(script.main, ["--config", str(config), "--output_dir", str(out),
                                 "--tokenizer_path", str(tokenizer), "--num_proc", "1", *extra])


def shard_bytes(out):
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.jsonl"))}


@pytest.mark.e2e
def test_cli_end_to_end_then_same_bytes_in_process(tmp_path, data_dir, toy_tokenizer_dir, script, capsys):
    config = make_config(tmp_path, data_dir)
    cli_out = tmp_path / "cli"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--config", str(config), "--output_dir", str(cli_out),
                           "--tokenizer_path", str(toy_tokenizer_dir), "--num_proc", "2"],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "drop reasons" in proc.stdout and "malformed:invalid_json 1" in proc.stdout
    assert "chat.jsonl:6: invalid_json" in proc.stdout
    names = {p.name for p in cli_out.iterdir()}
    assert {"manifest.json", "DATA_CARD.md", "training_state.json", "length_histogram.png",
            "train_00000.jsonl", "val_00000.jsonl"} <= names
    manifest = verify_data_dir(cli_out, tokenizer_fingerprint(toy_tokenizer_dir))
    assert manifest["tokenizer_metadata"]["vocab_size"] == 1000
    assert manifest["tokenizer_metadata"]["special_tokens"]["eos_token"] == ["</s>", 3]
    assert manifest["template"]["stop_token_ids"] == [5, 3]
    chat = manifest["sources"]["chat"]
    assert chat["dropped_by_reason"] == {"duplicate": 1, "url": 1} and chat["truncated"] == 1
    assert chat["skipped_by_reason"] == {"invalid_json": 1}
    state = json.loads((cli_out / "training_state.json").read_text())
    assert state["skipped_rows"][0]["origin"].endswith("chat.jsonl:6")
    for example in shard_examples(cli_out, "train"):
        assert len(example["input_ids"]) == len(example["labels"]) <= 128
        assert example["labels"][-2] == 5 and example["input_ids"][-2] == 5  # <|im_end|> trained
    card = (cli_out / "DATA_CARD.md").read_text()
    assert "[[" in card and "MIT" in card and "## Drops by reason" in card

    again = tmp_path / "again"
    assert run(script, config, again, toy_tokenizer_dir) == 0
    assert shard_bytes(again) == shard_bytes(cli_out)  # num_proc 1 == num_proc 2, run after run
    second = json.loads((again / "manifest.json").read_text())
    manifest.pop("created_at"), second.pop("created_at")
    assert second == manifest
    assert (again / "DATA_CARD.md").read_text() == card


def test_existing_output_needs_force(tmp_path, data_dir, toy_tokenizer_dir, script, capsys):
    config = make_config(tmp_path, data_dir)
    out = tmp_path / "out"
    assert run(script, config, out, toy_tokenizer_dir) == 0
    assert run(script, config, out, toy_tokenizer_dir) == 2
    assert "already exists; pass --force" in capsys.readouterr().err
    assert run(script, config, out, toy_tokenizer_dir, "--force") == 0


def test_strict_stops_at_the_first_malformed_row_and_writes_nothing(tmp_path, data_dir, toy_tokenizer_dir,
                                                                    script, capsys):
    config = make_config(tmp_path, data_dir)
    out = tmp_path / "strict"
    assert run(script, config, out, toy_tokenizer_dir, "--strict") == 2
    err = capsys.readouterr().err.strip()
    assert "chat.jsonl:6: malformed row (invalid_json" in err and len(err.splitlines()) == 1
    assert not out.exists() and not list(tmp_path.glob(".strict*"))


def test_nothing_left_is_a_user_error(tmp_path, data_dir, toy_tokenizer_dir, script, capsys):
    config = make_config(tmp_path, data_dir, quality_filters={"min_response_length": 10_000})
    assert run(script, config, tmp_path / "none", toy_tokenizer_dir) == 2
    assert "no training example left" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()


def test_custom_data_ratio_is_reached(tmp_path, data_dir, toy_tokenizer_dir, script, capsys):
    config = make_config(tmp_path, data_dir, mixture={"custom_data_ratio": 0.25},
                         output_params={"train_ratio": 1, "sequence_length": 128})
    out = tmp_path / "mix"
    assert run(script, config, out, toy_tokenizer_dir) == 0
    sources = json.loads((out / "manifest.json").read_text())["sources"]
    assert sources["notes"]["achieved_ratio"] == pytest.approx(0.25, abs=0.03)
    assert sources["chat"]["multiplier"] == 1.0 and sources["alpaca"]["multiplier"] == 1.0


def test_adding_a_source_moves_no_example_between_splits(tmp_path, data_dir, toy_tokenizer_dir, script, capsys):
    base = json.loads(make_config(tmp_path, data_dir).read_text())

    def val_set(datasets, name):
        config = make_config(tmp_path, data_dir, datasets=datasets)
        out = tmp_path / name
        assert run(script, config, out, toy_tokenizer_dir) == 0
        return {tuple(e["input_ids"]) for e in shard_examples(out, "val") if e["source"] == "alpaca"}

    alone = val_set(base["datasets"][1:2], "alone")
    assert alone and alone == val_set(base["datasets"], "all")


def test_config_errors_are_one_line(tmp_path, data_dir, toy_tokenizer_dir, script, capsys):
    bad = make_config(tmp_path, data_dir, mixture={"target_ratios": {"nope": 0.5}})
    assert run(script, bad, tmp_path / "x", toy_tokenizer_dir) == 2
    assert "mixture.target_ratios: nope not among the dataset names" in capsys.readouterr().err
    bad = make_config(tmp_path, data_dir, template="llama")
    assert run(script, bad, tmp_path / "x", toy_tokenizer_dir) == 2
    assert "template" in capsys.readouterr().err
    assert run(script, tmp_path / "missing.json", tmp_path / "x", toy_tokenizer_dir) == 2
    assert "missing.json: file not found" in capsys.readouterr().err


def test_max_train_examples_caps_the_whole_mix_and_keeps_its_shares(tmp_path, data_dir, toy_tokenizer_dir, script,
                                                                     capsys):
    datasets = json.loads(make_config(tmp_path, data_dir).read_text())["datasets"][:2]
    full, capped = tmp_path / "full", tmp_path / "capped"
    assert run(script, make_config(tmp_path, data_dir, datasets=datasets), full, toy_tokenizer_dir) == 0
    assert run(script, make_config(tmp_path, data_dir, datasets=datasets, max_train_examples=30), capped,
               toy_tokenizer_dir) == 0
    assert "max_train_examples 30:" in capsys.readouterr().out
    every, kept = list(shard_examples(full, "train")), list(shard_examples(capped, "train"))
    assert len(kept) == 30 < len(every)
    assert [e["input_ids"] for e in kept] == [e["input_ids"] for e in every[:30]]  # the seeded mix order, cut
    assert list(shard_examples(capped, "val")) == list(shard_examples(full, "val"))  # validation untouched
    share = sum(e["source"] == "alpaca" for e in kept) / 30
    assert abs(share - sum(e["source"] == "alpaca" for e in every) / len(every)) < 0.2


def test_hub_datasets_read_local_copies_named_by_flag_or_environment(tmp_path, data_dir, toy_tokenizer_dir, script,
                                                                      capsys, monkeypatch):
    datasets = [{"name": "alpaca", "type": "huggingface", "dataset_name": "tatsu-lab/alpaca", "format": "single_turn",
                 "text_fields": {"prompt": "instruction", "input": "input", "response": "output"}}]
    config = make_config(tmp_path, data_dir, datasets=datasets)
    copy = f"tatsu-lab/alpaca={data_dir / 'alpaca.json'}"
    assert run(script, config, tmp_path / "flag", toy_tokenizer_dir, "--local_copy", copy) == 0
    assert f"dataset 'alpaca': tatsu-lab/alpaca read from the local copy {data_dir / 'alpaca.json'} (--local_copy)" \
        in capsys.readouterr().out
    monkeypatch.setenv("SFT_LOCAL_COPIES", f"other/set=x.json,{copy}")  # entries for other configs are ignored
    assert run(script, config, tmp_path / "env", toy_tokenizer_dir) == 0
    assert "(SFT_LOCAL_COPIES)" in capsys.readouterr().out
    assert shard_bytes(tmp_path / "env") == shard_bytes(tmp_path / "flag")
    assert run(script, config, tmp_path / "typo", toy_tokenizer_dir, "--local_copy", "tatsu-lab/alpacca=x.json") == 2
    assert capsys.readouterr().err.strip() == ("error: --local_copy tatsu-lab/alpacca: names no huggingface dataset of "
                                               "this config (its hub datasets: tatsu-lab/alpaca)")
    assert run(script, config, tmp_path / "kind", toy_tokenizer_dir, "--local_copy", "tatsu-lab/alpaca=rows.txt") == 2
    assert "cannot tell the file type" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists() and not (tmp_path / "kind").exists()


def test_solve_multipliers():
    kept, weights = {"a": 100, "b": 10}, {"a": 1.0, "b": 1.0}
    domain = {"a": False, "b": True}
    assert solve_multipliers(kept, {"a": 0.5, "b": 2.0}, domain, MixtureConfig()) == {"a": 0.5, "b": 2.0}
    custom = solve_multipliers(kept, weights, domain, MixtureConfig(custom_data_ratio=0.5))
    assert custom == {"a": 1.0, "b": pytest.approx(10.0)}
    target = solve_multipliers(kept, weights, domain, MixtureConfig(target_ratios={"a": 3, "b": 1}))
    assert target["a"] * 100 / (target["a"] * 100 + target["b"] * 10) == pytest.approx(0.75)
    assert target["a"] * 100 + target["b"] * 10 == pytest.approx(110)  # total size kept
    partial = solve_multipliers(kept, weights, domain, MixtureConfig(target_ratios={"b": 0.2}))
    assert partial["a"] == 1.0 and partial["b"] * 10 == pytest.approx(25)


def test_repeats_and_split_are_deterministic_and_proportional():
    digests = [bytes([i % 256, i // 256]) * 16 for i in range(4000)]
    assert sum(repeats(0.5, d, seed=3) for d in digests) == pytest.approx(2000, rel=0.05)
    assert {repeats(2.0, d, seed=3) for d in digests} == {2}
    assert sum(split_of(d, 0.9) == "train" for d in digests) == pytest.approx(3600, rel=0.03)
    assert [split_of(d, 0.9) for d in digests[:50]] == [split_of(d, 0.9) for d in digests[:50]]


def test_weights_repeat_train_examples_but_never_val(tmp_path, data_dir, toy_tokenizer_dir, script, capsys):
    datasets = json.loads(make_config(tmp_path, data_dir).read_text())["datasets"]
    datasets[0]["weight"], datasets[1]["weight"], datasets[2]["weight"] = 2, 0, 1
    out = tmp_path / "weights"
    assert run(script, make_config(tmp_path, data_dir, datasets=datasets), out, toy_tokenizer_dir) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    chat, alpaca = manifest["sources"]["chat"], manifest["sources"]["alpaca"]
    assert chat["written_train"] == 2 * chat["kept_train"] and chat["written_val"] == chat["kept_val"] > 0
    assert alpaca["written_train"] == alpaca["written_val"] == 0
    train = [e["input_ids"] for e in shard_examples(out, "train")]
    assert train[0] != train[1]  # copies of an example are spread out, not back to back
