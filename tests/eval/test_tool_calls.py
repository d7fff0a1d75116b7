"""Tool-call scoring of the evaluation stage: the scorer on hand-written generations, the held-out turns found in a
prepared corpus, and the stage end to end on a tiny tool corpus (stubbed generations, then a real tiny model)."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from paths import ROOT
from scripts_loader import load_script
from utils.common.errors import run_cli
from utils.data.fingerprint import tokenizer_fingerprint
from utils.data.shards import verify_data_dir
from utils.data.templates import get_template
from utils.data.tokenizer import copy_tokenizer_files
from utils.eval.tool_calls import json_equal, parse_calls, score_tool_calls, tool_call_items
from utils.model.generation import GenerationResult
from utils.sampling.example_store import load_sft_store

SCRIPT = ROOT / "scripts" / "04_evaluate_sft.py"
CITIES = ("Paris", "Rome", "Oslo", "Lima", "Cairo", "Quito", "Bern", "Riga", "Kyiv", "Doha", "Baku", "Suva")
WEATHER = {"type": "function", "function": {"name": "get_weather", "description": "Weather of a city on a day",
                                            "parameters": {"type": "object", "properties": {
                                                "city": {"type": "string"}, "day": {"type": "integer"}}}}}
REFERENCE = [{"name": "get_weather", "arguments": {"city": "Paris", "day": 3}}]


def call_text(name: str = "get_weather", arguments: str = '{"city": "Paris", "day": 3}') -> str:
    return f'<tool_call>{{"name": "{name}", "arguments": {arguments}}}</tool_call>'


def result(text: str, finished: bool = True) -> GenerationResult:
    return GenerationResult(text, finished, 5)


@pytest.mark.parametrize("text, finished, expected", [
    (call_text(), True, (1.0, 1.0, 1.0)),
    (call_text(arguments='{"day": 3, "city": "Paris"}'), True, (1.0, 1.0, 1.0)),  # key order is not JSON
    ("I will look it up.\n<tool_call>\n" + call_text()[11:-12] + "\n</tool_call>", True, (1.0, 1.0, 1.0)),
    (call_text(name="get_time"), True, (1.0, 0.0, 0.0)),
    (call_text(arguments='{"city": "Rome", "day": 3}'), True, (1.0, 1.0, 0.0)),
    (call_text(arguments='{"city": "Paris", "day": "3"}'), True, (1.0, 1.0, 0.0)),
    (call_text(arguments='{"city": "Paris"}'), True, (1.0, 1.0, 0.0)),
    (call_text() + call_text(), True, (1.0, 0.0, 0.0)),  # one call too many
    (call_text(), False, (0.0, 0.0, 0.0)),  # cut at max_new_tokens: a deployed model had not stopped
    ('<tool_call>{"name": "get_weather", "arguments": {"city": "Par', True, (0.0, 0.0, 0.0)),
    ('<tool_call>{"name": get_weather}</tool_call>', True, (0.0, 0.0, 0.0)),
    ('<tool_call>{"arguments": {}}</tool_call>', True, (0.0, 0.0, 0.0)),
    ('<tool_call>{"name": "get_weather", "arguments": [1]}</tool_call>', True, (0.0, 0.0, 0.0)),
    (call_text() + "<tool_call>", True, (0.0, 0.0, 0.0)),
    ("It is sunny in Paris.", True, (0.0, 0.0, 0.0)),
    ("", True, (0.0, 0.0, 0.0)),
])
def test_scorer_on_hand_written_generations(text, finished, expected):
    scores = score_tool_calls([REFERENCE], [result(text, finished)])
    assert scores["tool_call_examples"] == 1
    got = (scores["tool_call_parse_rate"], scores["tool_call_name_match"], scores["tool_call_accuracy"])
    assert got == expected


def test_scorer_averages_and_reports_none_without_turns():
    scores = score_tool_calls([REFERENCE] * 4, [result(call_text()), result(call_text(name="x")),
                                                 result("no call"), result(call_text())])
    assert (scores["tool_call_parse_rate"], scores["tool_call_name_match"], scores["tool_call_accuracy"]) == \
        (0.75, 0.5, 0.5)
    assert score_tool_calls([], []) == {"tool_call_examples": 0, "tool_call_parse_rate": None,
                                        "tool_call_name_match": None, "tool_call_accuracy": None}


def test_json_equal_is_strict_about_types_not_key_order():
    assert json_equal({"a": [1, {"b": 2.0}], "c": None}, {"c": None, "a": [1, {"b": 2}]})
    assert not json_equal({"a": True}, {"a": 1}) and not json_equal({"a": "1"}, {"a": 1})
    assert not json_equal([1, 2], [2, 1]) and not json_equal({"a": 1}, {"a": 1, "b": 1})
    assert parse_calls('<tool_call>"get_weather"</tool_call>') is None


def rows() -> list[dict]:
    out = []
    for day, city in enumerate(CITIES):
        call = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": city, "day": day}}}
        out.append({"messages": [{"role": "user", "content": f"What is the weather in {city} on day {day}?"},
                                 {"role": "assistant", "content": None, "tool_calls": [call]},
                                 {"role": "tool", "content": json.dumps({"sky": "clear"})},
                                 {"role": "assistant", "content": f"Clear skies in {city}."}],
                    "tools": [WEATHER]})
        out.append({"messages": [{"role": "user", "content": f"Say hello to {city}."},
                                 {"role": "assistant", "content": f"Hello, {city}!"}]})
    return out


@pytest.fixture(scope="module")
def tool_env(tmp_path_factory, toy_tokenizer_dir, toy_tokenizer):
    """A tool corpus prepared by the real stage 1 (half of it held out) and a tiny full model."""
    from transformers import LlamaConfig, LlamaForCausalLM

    root = tmp_path_factory.mktemp("tool_eval")
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows()), encoding="utf-8")
    config = {"name": "tools", "template": "chatml",
              "output_params": {"sequence_length": 4096, "shard_size": 100, "train_ratio": 0.5},
              "datasets": [{"name": "tools", "type": "jsonl", "dataset_name": str(root / "rows.jsonl"),
                            "format": "messages"}], "seed": 1}
    (root / "config.json").write_text(json.dumps(config), encoding="utf-8")
    prepare = load_script("02_prepare_sft_corpus")
    assert run_cli(prepare.main, ["--config", str(root / "config.json"), "--output_dir", str(root / "data"),
                                  "--tokenizer_path", str(toy_tokenizer_dir), "--num_proc", "1"]) == 0
    model_config = LlamaConfig(vocab_size=len(toy_tokenizer), hidden_size=32, intermediate_size=64,
                               num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                               max_position_embeddings=2048, tie_word_embeddings=True, pad_token_id=0,
                               bos_token_id=2, eos_token_id=3)
    torch.manual_seed(0)
    LlamaForCausalLM(model_config).save_pretrained(str(root / "model"))
    copy_tokenizer_files(toy_tokenizer_dir, root / "model")
    return root


def held_out(tool_env, toy_tokenizer, toy_tokenizer_dir):
    manifest = verify_data_dir(tool_env / "data", tokenizer_fingerprint(toy_tokenizer_dir))
    stores = load_sft_store(tool_env / "data", "val", manifest).by_source()
    return tool_call_items(stores, toy_tokenizer, get_template("chatml", toy_tokenizer).stop_token_ids)


def test_held_out_turns_are_the_val_calls_with_their_prompts(tool_env, toy_tokenizer, toy_tokenizer_dir):
    items = held_out(tool_env, toy_tokenizer, toy_tokenizer_dir)
    assert items, "the val split holds no tool call"
    template = get_template("chatml", toy_tokenizer)
    by_city = {r["messages"][0]["content"]: r for r in rows() if "tools" in r}
    for item in items:
        call = item.reference[0]
        assert call["name"] == "get_weather" and len(item.reference) == 1
        row = by_city[f"What is the weather in {call['arguments']['city']} on day {call['arguments']['day']}?"]
        # the prompt is the conversation up to the call, tools included, with the generation prompt
        assert item.prompt_ids == template.encode_prompt(row["messages"][:1], tools=row["tools"])


def stub(calls: list, reference: dict):
    """generate_from_ids stand-in: the first model answers each prompt with its reference call, the second with
    text that is no call."""
    def fake(model, tokenizer, stop_ids, prompts, settings, batch_size=16, show_progress=False):
        calls.append(len(prompts))
        good = len(calls) == 1
        return [result(("<tool_call>" + json.dumps(reference[tuple(p)]) + "</tool_call>") if good
                       else '<tool_call>{"name": "get_weather", "arguments": {"city": "Par') for p in prompts]
    return fake


def cli_args(tool_env, out):
    return ["--model_path", str(tool_env / "model"), "--base_model_path", str(tool_env / "model"),
            "--data_dirs", str(tool_env / "data"), "--max_new_tokens", "8", "--batch_size", "4",
            "--precision", "fp32", "--output_dir", str(out), "--no_progress"]


def test_stage_reports_tool_call_accuracy_base_vs_tuned(tool_env, toy_tokenizer, toy_tokenizer_dir, tmp_path,
                                                        monkeypatch, capsys):
    items = held_out(tool_env, toy_tokenizer, toy_tokenizer_dir)
    calls: list = []
    monkeypatch.setattr("utils.eval.tool_calls.generate_from_ids",
                        stub(calls, {tuple(i.prompt_ids): i.reference[0] for i in items}))
    assert run_cli(load_script("04_evaluate_sft").main, cli_args(tool_env, tmp_path / "out")) == 0
    assert calls == [len(items), len(items)]
    report = json.loads((tmp_path / "out" / "eval_report.json").read_text())
    tuned, base, diff = report["tuned"], report["base"], report["difference"]
    assert tuned["tool_call_examples"] == base["tool_call_examples"] == len(items)
    assert tuned["tool_call_parse_rate"] == tuned["tool_call_name_match"] == tuned["tool_call_accuracy"] == 1.0
    assert base["tool_call_parse_rate"] == base["tool_call_name_match"] == base["tool_call_accuracy"] == 0.0
    assert diff["tool_call_accuracy"] == 1.0 and tuned["exact_match"] is None
    assert "tool_call_accuracy" in report["definitions"]
    assert report["setup"]["tool-call turns"]["value"].startswith(f"{len(items)} held-out")
    predictions = [json.loads(line) for line in (tmp_path / "out" / "predictions.jsonl").read_text().splitlines()]
    assert [p["task"] for p in predictions] == ["tool_call"] * len(items)
    assert all(p["tuned"]["correct"] and not p["base"]["correct"] for p in predictions)
    markdown = (tmp_path / "out" / "eval_report.md").read_text()
    assert "tool_call_accuracy" in markdown and "tool-call turns" in markdown
    assert "tool_call_accuracy" in capsys.readouterr().out


@pytest.mark.e2e
def test_cli_end_to_end_counts_a_tiny_models_text_as_misses(tool_env, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, str(SCRIPT), *cli_args(tool_env, out)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "eval_report.json").read_text())
    for side in ("tuned", "base"):
        assert report[side]["tool_call_examples"] > 0
        assert report[side]["tool_call_accuracy"] == 0.0  # an untrained model writes no call: counted, no error
    assert "tool_call_parse_rate" in proc.stdout
