"""The evaluation stage on tiny models: loss numbers against a per-example reference, adapter loading,
scoring through the whole stage with stub generations, the real CLI, and one-line user errors."""
from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from paths import ROOT
from scripts_loader import load_script
from utils.common.errors import run_cli
from utils.data.fingerprint import tokenizer_fingerprint
from utils.data.shards import FORMAT_VERSION, ShardWriter, example_line, verify_data_dir
from utils.data.templates import get_template
from utils.data.tokenizer import copy_tokenizer_files
from utils.eval.evaluation import (EvalInputs, evaluate_model, generation_metrics, read_eval_set, retention_metrics,
                              retention_store, val_metrics)
from utils.eval.models import load_eval_model
from utils.model.generation import GenerationResult
from utils.model.generation import GenerationSettings
from utils.sampling.example_store import load_sft_store

SCRIPT = ROOT / "scripts" / "04_evaluate_sft.py"
REQUIRED = ("val_loss", "val_ppl", "exact_match", "format_compliance", "retention_ppl")


def tiny_lm(vocab: int, seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=2, eos_token_id=3)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def conversation(i: int) -> tuple[list[dict], str, str]:
    if i % 2:
        return [{"role": "user", "content": f"What is {i} plus 7?"}], str(i + 7), "add"
    items = ", ".join(["x", "y", "z"][: 1 + i % 3])
    return [{"role": "user", "content": f"Reverse the list [{items}]."}], f"[{items[::-1]}]", "reverse_list"


def write_data_dir(path, tokenizer, sha: str) -> None:
    """A prepared corpus (two sources) as the prepare stage writes it."""
    path.mkdir(parents=True)
    template = get_template("chatml", tokenizer)
    splits = {}
    for split, count in (("train", 4), ("val", 7)):
        writer = ShardWriter(path, split, shard_size=4)
        for i in range(count):
            messages, answer, task = conversation(i)
            enc = template.encode(messages + [{"role": "assistant", "content": answer}])
            writer.add(example_line(enc.input_ids, enc.labels, task), len(enc.input_ids), enc.num_supervised)
        splits[split] = writer.close()
    manifest = {"format_version": FORMAT_VERSION, "tokenizer_metadata": {"tokenizer_sha256": sha},
                "sequence_length": 128, "splits": splits,
                "template": {"name": "chatml", "family": "chatml", "notes": [], "train_on": "all_assistant_turns",
                             "stop_token_ids": template.stop_token_ids}}
    (path / "manifest.json").write_text(json.dumps(manifest))


@pytest.fixture(scope="module")
def env(tmp_path_factory, toy_tokenizer_dir, toy_tokenizer):
    """A full base model, a LoRA adapter on it, a prepared corpus, an eval set and a text corpus."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    root = tmp_path_factory.mktemp("eval")
    base = root / "base"
    tiny_lm(len(toy_tokenizer)).save_pretrained(str(base))
    copy_tokenizer_files(toy_tokenizer_dir, base)
    torch.manual_seed(1)
    lora = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base)), lora)
    assert isinstance(peft, PeftModel)
    peft.save_pretrained(str(root / "adapter"))
    copy_tokenizer_files(toy_tokenizer_dir, root / "adapter")
    write_data_dir(root / "data", toy_tokenizer, tokenizer_fingerprint(toy_tokenizer_dir))
    rows = []
    for i in range(6):
        messages, answer, task = conversation(i)
        rows.append({"messages": messages, "reference": answer, "task": task} if i % 3 else
                    {"prompt": messages[0]["content"], "reference": answer, "task": task})
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "corpus").mkdir()
    for k in range(3):
        (root / "corpus" / f"doc{k}.txt").write_text("The answer is 12. What is 3 plus 4? " * (20 + k))
    return root


def make_inputs(tokenizer, **overrides) -> EvalInputs:
    fields = {"tokenizer": tokenizer, "template": get_template("chatml", tokenizer),
              "settings": GenerationSettings(max_new_tokens=5), "show_progress": False, "batch_tokens": 4096}
    fields.update(overrides)
    return EvalInputs(**fields)


def val_stores(env, tokenizer_dir):
    manifest = verify_data_dir(env / "data", tokenizer_fingerprint(tokenizer_dir))
    return load_sft_store(env / "data", "val", manifest).by_source()


def reference_loss(model, store) -> tuple[float, int]:
    """Per example, unpacked, straight from the model's logits: summed CE over shifted supervised labels."""
    total, count = 0.0, 0
    for i in range(len(store)):
        ids, labels = (torch.as_tensor(np.asarray(a), dtype=torch.long) for a in store.get(i))
        with torch.no_grad():
            logits = model(input_ids=ids[None]).logits[0, :-1]
        keep = labels[1:] != -100
        total += torch.nn.functional.cross_entropy(logits[keep], labels[1:][keep], reduction="sum").item()
        count += int(keep.sum())
    return total, count


def test_val_loss_is_token_weighted_and_independent_of_packing(env, toy_tokenizer, toy_tokenizer_dir):
    model = load_eval_model(str(env / "base"), toy_tokenizer, tokenizer_fingerprint(toy_tokenizer_dir), "toy", "cpu")
    stores = val_stores(env, toy_tokenizer_dir)
    assert [s.name for s in stores] == ["data/reverse_list", "data/add"]
    packed = val_metrics(model, make_inputs(toy_tokenizer, val_stores=stores))
    one_by_one = val_metrics(model, make_inputs(toy_tokenizer, val_stores=stores, batch_tokens=1))
    expected = [reference_loss(model, s) for s in stores]
    assert packed["loss"] == pytest.approx(sum(t for t, _ in expected) / sum(n for _, n in expected), rel=1e-5)
    assert packed["ppl"] == pytest.approx(math.exp(packed["loss"]), rel=1e-9)
    assert packed["tokens"] == sum(n for _, n in expected)
    for store, (total, count) in zip(stores, expected):
        assert packed["per_source"][store.name]["loss"] == pytest.approx(total / count, rel=1e-5)
    assert one_by_one["loss"] == pytest.approx(packed["loss"], rel=1e-5)


def test_retention_windows_and_perplexity(env, toy_tokenizer, toy_tokenizer_dir):
    docs = [(env / "corpus" / f"doc{k}.txt").read_text() for k in range(3)]
    store = retention_store(docs, toy_tokenizer, max_tokens=100, window=32)
    assert len(store) == 3 and store.lengths.tolist() == [32, 32, 32]
    model = load_eval_model(str(env / "base"), toy_tokenizer, tokenizer_fingerprint(toy_tokenizer_dir), "toy", "cpu")
    kept = retention_metrics(model, make_inputs(toy_tokenizer, retention=store))
    assert kept["tokens"] == 3 * 31  # the first token of a window predicts nothing before it
    assert kept["ppl"] == pytest.approx(math.exp(kept["loss"]))
    assert kept["loss"] == pytest.approx(reference_loss(model, store)[0] / 93, rel=1e-5)


def test_adapter_dir_is_base_plus_adapter(env, toy_tokenizer, toy_tokenizer_dir):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    sha = tokenizer_fingerprint(toy_tokenizer_dir)
    merged = load_eval_model(str(env / "adapter"), toy_tokenizer, sha, "toy", "cpu")
    base = AutoModelForCausalLM.from_pretrained(str(env / "base")).eval()
    base_logits = base(input_ids=torch.arange(4, 20)[None]).logits
    unmerged = PeftModel.from_pretrained(base, str(env / "adapter")).eval()
    with torch.no_grad():
        expected = unmerged(input_ids=torch.arange(4, 20)[None]).logits
        got = merged(input_ids=torch.arange(4, 20)[None]).logits
    assert not merged.training
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, base_logits, atol=1e-3)


def test_generation_is_deterministic_with_a_seed(env, toy_tokenizer, toy_tokenizer_dir):
    model = load_eval_model(str(env / "base"), toy_tokenizer, tokenizer_fingerprint(toy_tokenizer_dir), "toy", "cpu")
    inputs = make_inputs(toy_tokenizer, items=read_eval_set(env / "eval.jsonl"), batch_size=4,
                         settings=GenerationSettings(max_new_tokens=6, temperature=1.0, seed=7))
    first, second = generation_metrics(model, inputs), generation_metrics(model, inputs)
    assert first[1] == second[1] and first[0] == second[0]
    assert first[0]["eval_examples"] == 6 and len(first[2]) == 6


def _stub(calls: list):
    """generate_responses stand-in: the first model called answers every reference; the second never stops."""
    def fake(model, tokenizer, template, conversations, settings, batch_size=16, show_progress=False):
        answers = {conversation(i)[0][0]["content"]: conversation(i)[1] for i in range(6)}
        calls.append(len(conversations))
        good = len(calls) == 1
        return [GenerationResult(answers.get(c[-1]["content"], "a fine answer") if good else "loop loop loop loop",
                                 good, 3) for c in conversations]
    return fake


def cli_args(env, out, *extra):
    return ["--model_path", str(env / "adapter"), "--base_model_path", str(env / "base"),
            "--data_dirs", str(env / "data"), "--eval_set", str(env / "eval.jsonl"),
            "--retention_corpus", str(env / "corpus"), "--retention_max_tokens", "300",
            "--config", str(ROOT / "config" / "sft_training" / "lora_tiny.json"), "--max_new_tokens", "6",
            "--batch_size", "4", "--precision", "fp32", "--output_dir", str(out), "--no_progress", *extra]


def test_stub_that_always_answers_right_scores_100_percent(env, tmp_path, monkeypatch, capsys):
    calls: list = []
    monkeypatch.setattr("utils.eval.evaluation.generate_responses", _stub(calls))
    script = load_script("04_evaluate_sft")
    assert run_cli(script.main, cli_args(env, tmp_path / "out")) == 0
    assert calls == [6 + 3, 6 + 3]  # eval set + the config's 3 eval prompts, once per model
    report = json.loads((tmp_path / "out" / "eval_report.json").read_text())
    tuned, base, diff = report["tuned"], report["base"], report["difference"]
    assert tuned["exact_match"] == tuned["format_compliance"] == tuned["success_rate"] == 1.0
    assert all(f["exact_match"] == 1.0 for f in tuned["per_family"].values())
    assert base["exact_match"] == base["format_compliance"] == 0.0  # never stopped: all failures
    assert diff["exact_match"] == 1.0 and diff["per_family"]["add"]["exact_match"] == 1.0
    assert base["repetition_3"] == 0.5 and tuned["repetition_3"] == 0.0
    assert [s["response"] for s in tuned["samples"]] == ["a fine answer"] * 3
    printed = capsys.readouterr().out
    assert "exact_match" in printed and "tuned-base" in printed


@pytest.mark.e2e
def test_cli_end_to_end_on_tiny_models(env, tmp_path):
    out = tmp_path / "eval"
    proc = subprocess.run([sys.executable, str(SCRIPT), *cli_args(env, out)], capture_output=True, text=True,
                          cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert {"eval_report.json", "eval_report.md", "predictions.jsonl", "accuracy_by_family.png",
            "response_lengths.png", "loss_by_source.png"} <= {p.name for p in out.iterdir()}
    report = json.loads((out / "eval_report.json").read_text())
    for side in ("tuned", "base"):
        for key in REQUIRED:
            assert math.isfinite(report[side][key]), (side, key)
        assert report[side]["val_ppl"] == pytest.approx(math.exp(report[side]["val_loss"]))
        assert report[side]["eval_examples"] == 6 and len(report[side]["samples"]) == 3
    assert report["difference"]["val_loss"] == pytest.approx(report["tuned"]["val_loss"] - report["base"]["val_loss"])
    assert report["tuned"]["val_loss"] != report["base"]["val_loss"]  # the adapter changes the model
    assert report["settings"]["generation"]["max_new_tokens"] == 6
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 6
    assert "## Instruction following per task family" in (out / "eval_report.md").read_text()
    assert "val_loss" in proc.stdout and "retention_ppl" in proc.stdout


def _error(script, argv, capsys) -> str:
    assert run_cli(script.main, argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_user_errors_are_one_line_and_write_nothing(env, tmp_path, toy_tokenizer, capsys):
    script = load_script("04_evaluate_sft")
    out = tmp_path / "out"
    other = tmp_path / "other_data"
    write_data_dir(other, toy_tokenizer, "0" * 64)
    assert "Tokenizer mismatch" in _error(script, cli_args(env, out, "--data_dirs", str(other)), capsys)
    adapter = tmp_path / "adapter"
    shutil.copytree(env / "adapter", adapter)
    config = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": "/nowhere"}))
    err = _error(script, cli_args(env, out, "--model_path", str(adapter)), capsys)
    assert "adapter_config.json: base_model_name_or_path '/nowhere' not found" in err
    err = _error(script, cli_args(env, out, "--base_model_path", str(tmp_path / "missing")), capsys)
    assert err.startswith(f"error: --base_model_path {tmp_path / 'missing'}: not found")
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "hi", "reference": "x"}\n{"prompt": "no reference"}\n')
    assert f"{bad}:2: needs a string field 'reference'" in _error(script, cli_args(env, out, "--eval_set", str(bad)),
                                                                   capsys)
    assert not out.exists()


def test_evaluate_model_without_optional_inputs_reports_none(env, toy_tokenizer, toy_tokenizer_dir):
    model = load_eval_model(str(env / "base"), toy_tokenizer, tokenizer_fingerprint(toy_tokenizer_dir), "toy", "cpu")
    result = evaluate_model(model, make_inputs(toy_tokenizer))
    assert result.metrics["val_loss"] is None and result.metrics["exact_match"] is None
    assert result.metrics["retention_ppl"] is None and result.predictions == []


def test_rephrased_set_is_scored_apart(env, tmp_path, monkeypatch):
    calls: list = []
    monkeypatch.setattr("utils.eval.evaluation.generate_responses", _stub(calls))
    messages, answer, task = conversation(1)  # the stub answers this one right, the new wording wrong
    rows = [{"messages": messages, "reference": answer, "task": task},
            {"prompt": "Could you add 7 to 1?", "reference": answer, "task": task}]
    (tmp_path / "rephrased.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = load_script("04_evaluate_sft")
    args = cli_args(env, tmp_path / "out", "--rephrased_set", str(tmp_path / "rephrased.jsonl"))
    assert run_cli(script.main, args) == 0
    assert calls == [6 + 2 + 3, 6 + 2 + 3]
    report = json.loads((tmp_path / "out" / "eval_report.json").read_text())
    assert report["tuned"]["exact_match"] == 1.0 and report["tuned"]["exact_match_rephrased"] == 0.5
    assert report["tuned"]["per_family_rephrased"]["add"]["exact_match"] == 0.5
    assert report["base"]["exact_match_rephrased"] == 0.0
    assert "exact match, new wording" in (tmp_path / "out" / "eval_report.md").read_text()
