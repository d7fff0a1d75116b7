"""The chat template a final/ and an export carry tokenizes held-out conversations to the prepared shards' ids.

The prepare stage (02_prepare_sft_corpus.py) renders each conversation with the training template; the exported
tokenizer (write_trained_template, what save_final and 05_export_model.py call) is loaded with plain transformers
and its ``apply_chat_template`` must give the same input ids, and its ``{% generation %}`` marks (where the template has
them) the same supervised tokens, for every example of the val split (held out from training), for every template."""
from __future__ import annotations

import json
import shutil

import pytest

from scripts_loader import load_script
from shard_helpers import shard_examples
from test_templates import family_tokenizer
from utils.common.errors import run_cli
from utils.data.chat_jinja import write_trained_template

TEMPLATES = [("chatml", None), ("instruct", None), ("chat", None), ("alpaca", None), ("tokenizer", None),
             ("tokenizer", "llama3"), ("tokenizer", "gemma"), ("tokenizer", "phi3")]
TOPICS = ["apple", "river", "piano", "cloud", "garden", "pencil", "train", "mountain", "coffee", "window"]


def conversations() -> list[list[dict]]:
    """Single turns, turns behind a system prompt, and multi-turn conversations (with and without one)."""
    out = []
    for i, topic in enumerate(TOPICS * 3):
        turns = [{"role": "user", "content": f"Tell me about the {topic} number {i}."},
                 {"role": "assistant", "content": f"The {topic} {i} is fine."}]
        if i % 3 == 1:
            turns = [{"role": "system", "content": f"You answer in {i % 4 + 1} words."}, *turns]
        if i % 2 == 0:
            turns += [{"role": "user", "content": f"And the next one, {i + 1}?"},
                      {"role": "assistant", "content": f"Also fine:\n{topic} {i + 1}."}]
        out.append(turns)
    return out


@pytest.fixture(scope="module")
def chat_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompt_ids") / "chat.jsonl"
    path.write_text("".join(json.dumps({"messages": m}) + "\n" for m in conversations()), encoding="utf-8")
    return path


@pytest.mark.parametrize("name,family", TEMPLATES, ids=[f"{n}-{f or 'toy'}" for n, f in TEMPLATES])
def test_exported_template_gives_the_prepared_ids(tmp_path, chat_file, toy_tokenizer_dir, name, family):
    from transformers import AutoTokenizer

    tokenizer_dir = tmp_path / "tokenizer"
    if family:
        family_tokenizer(toy_tokenizer_dir, family).save_pretrained(str(tokenizer_dir))
    else:
        shutil.copytree(toy_tokenizer_dir, tokenizer_dir)
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "name": "ids", "template": name, "seed": 1,
        "output_params": {"sequence_length": 256, "shard_size": 64, "train_ratio": 0.6, "overlong": "drop"},
        "datasets": [{"name": "chat", "type": "jsonl", "dataset_name": str(chat_file)}]}))
    data = tmp_path / "data"
    assert run_cli(load_script("02_prepare_sft_corpus").main, ["--config", str(config), "--output_dir", str(data),
                                                               "--tokenizer_path", str(tokenizer_dir),
                                                               "--num_proc", "1"]) == 0
    exported_dir = tmp_path / "exported"
    shutil.copytree(tokenizer_dir, exported_dir)
    write_trained_template(exported_dir, name)
    exported = AutoTokenizer.from_pretrained(str(exported_dir))  # plain transformers, nothing of this repository
    rendered = {}
    for messages in conversations():
        out = exported.apply_chat_template(messages, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)
        ids = list(out["input_ids"])
        rendered[tuple(ids)] = [t if m else -100 for t, m in zip(ids, out["assistant_masks"])]
    held_out = list(shard_examples(data, "val"))
    assert len(held_out) >= 8, len(held_out)
    for example in held_out + list(shard_examples(data, "train")):
        key = tuple(example["input_ids"])
        assert key in rendered, exported.decode(example["input_ids"])
        if "{% generation %}" in exported.chat_template:  # a model's own template may carry no marks
            assert rendered[key] == example["labels"]
