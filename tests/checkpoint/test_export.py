"""scripts/05_export_model.py: LoRA merged into its base, loads and generates with plain transformers."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from chat_helpers import CONVERSATIONS
from scripts_loader import load_script
from utils.common.errors import run_cli
from utils.data.fingerprint import tokenizer_fingerprint
from utils.data.tokenizer import IM_END, copy_tokenizer_files
from utils.model.modeling import ModelArchitecture, build_model, load_model
from utils.parallel.lora import LoraSettings, apply_lora

export_script = load_script("05_export_model")
ARCH = ModelArchitecture(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         intermediate_size=64, max_position_embeddings=128)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, toy_tokenizer_dir, toy_tokenizer) -> Path:
    """A fake SFT run: base/ (tiny Llama), run/final/ (perturbed LoRA adapter), run/eval/, a data dir."""
    root = tmp_path_factory.mktemp("export")
    base_dir = root / "base"
    build_model(ARCH, toy_tokenizer, seed=0).save_pretrained(str(base_dir))
    copy_tokenizer_files(toy_tokenizer_dir, base_dir)
    model = apply_lora(load_model(str(base_dir)), LoraSettings(r=4, lora_alpha=8, lora_dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():  # lora_B starts at zero: perturb it, or merging would change nothing
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn_like(param) * 0.5)
    final = root / "run" / "final"
    model.save_pretrained(str(final))
    stop_ids = [toy_tokenizer.convert_tokens_to_ids(IM_END), toy_tokenizer.eos_token_id]
    model.get_base_model().generation_config.eos_token_id = stop_ids
    model.get_base_model().generation_config.save_pretrained(str(final))
    copy_tokenizer_files(toy_tokenizer_dir, final)
    data_dir = _fake_data_dir(root / "data" / "demo")
    summary = {"config": {"name": "lora_toy", "training_params": {"learning_rate": 0.002}}, "model_path": str(base_dir),
               "data_dirs": [str(data_dir)], "data_weights": [1.0], "steps": 3, "tokens_seen": 1234,
               "template": {"name": "chatml", "family": "chatml", "stop_token_ids": stop_ids},
               "tokenizer_sha256": tokenizer_fingerprint(toy_tokenizer_dir),
               "initial_eval": {"eval/loss": 3.5}, "last_eval": {"eval/loss": 2.25}}
    (final / "training_summary.json").write_text(json.dumps(summary))
    (root / "run" / "eval").mkdir()
    (root / "run" / "eval" / "eval_report.json").write_text(json.dumps({"exact_match": 0.4375, "rows": [1, 2]}))
    return root


def _fake_data_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    manifest = {"config": {"datasets": [{"name": "demo_instruct", "dataset_name": "data/demo/instruct/train.jsonl"}]},
                "sources": {"demo_instruct": {"written_train": 5625, "license": "generated"}}}
    (path / "manifest.json").write_text(json.dumps(manifest))
    return path


def _peft_model(run_dir: Path):
    from peft import PeftModel

    return PeftModel.from_pretrained(load_model(str(run_dir / "base")), str(run_dir / "run" / "final")).eval()


@pytest.fixture(scope="module")
def exported(run_dir) -> Path:
    out = run_dir / "export"
    assert export_script.main(["--model_path", str(run_dir / "run" / "final"), "--output_dir", str(out)]) == 0
    return out


@pytest.fixture(scope="module")
def exported_f32(run_dir) -> Path:
    out = run_dir / "export_f32"
    assert export_script.main(["--model_path", str(run_dir / "run" / "final"), "--output_dir", str(out),
                               "--dtype", "float32"]) == 0
    return out


def test_merged_logits_equal_adapter_logits(run_dir, exported_f32):
    from transformers import AutoModelForCausalLM

    exported = exported_f32
    merged = AutoModelForCausalLM.from_pretrained(str(exported)).eval()
    base = load_model(str(run_dir / "base")).eval()
    ids = torch.randint(5, 900, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = _peft_model(run_dir)(ids).logits
        got = merged(ids).logits
        assert (base(ids).logits - expected).abs().max() > 1e-2  # the adapter really changes the model
    assert (got - expected).abs().max() <= 1e-4
    assert not (exported / "adapter_config.json").exists()
    assert (exported / "model.safetensors").is_file()


def test_bf16_by_default_half_the_bytes_and_the_card_says_so(run_dir, exported, exported_f32):
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with safe_open(str(exported / "model.safetensors"), "pt") as f:
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"BF16"}
    ratio = (exported / "model.safetensors").stat().st_size / (exported_f32 / "model.safetensors").stat().st_size
    assert ratio <= 0.51, ratio
    ids = torch.arange(5, 25).unsqueeze(0)
    with torch.no_grad():
        f32 = AutoModelForCausalLM.from_pretrained(str(exported_f32))(ids).logits
        bf16 = AutoModelForCausalLM.from_pretrained(str(exported), dtype=torch.float32)(ids).logits
    assert (f32 - bf16).abs().max() <= 5e-2  # the reload check's bfloat16 tolerance (RELOAD_TOLERANCE)
    card = (exported / "README.md").read_text()
    assert "bfloat16" in card and "bfloat16" not in (exported_f32 / "README.md").read_text()


def test_export_generates_with_its_chat_template(run_dir, exported):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(exported))
    model = AutoModelForCausalLM.from_pretrained(str(exported))
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is 3 plus 4?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**inputs, max_new_tokens=6, do_sample=False)
    assert out.shape[1] > inputs["input_ids"].shape[1]
    assert tokenizer_fingerprint(exported) == tokenizer_fingerprint(run_dir / "run" / "final")
    stop_ids = json.loads((run_dir / "run" / "final" / "generation_config.json").read_text())["eos_token_id"]
    assert model.generation_config.eos_token_id == stop_ids


def test_model_card_names_base_data_config_and_eval(run_dir, exported):
    card = (exported / "README.md").read_text()
    for text in (str(run_dir / "base"), "demo_instruct", "data/demo/instruct/train.jsonl", "lora_toy",
                 "exact_match", "0.4375", "2.2500", "r=4"):
        assert text in card, text
    assert "rows" not in card  # per-example lists stay in eval_report.json
    assert json.loads((exported / "eval_report.json").read_text())["exact_match"] == 0.4375
    assert (exported / "training_summary.json").is_file()


def test_full_model_final_is_resaved(run_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    full = tmp_path / "full" / "final"
    _peft_model(run_dir).merge_and_unload().save_pretrained(str(full))
    copy_tokenizer_files(run_dir / "run" / "final", full)
    out = tmp_path / "export_full"
    assert export_script.main(["--model_path", str(full), "--output_dir", str(out), "--dtype", "float32"]) == 0
    ids = torch.arange(5, 25).unsqueeze(0)
    with torch.no_grad():
        expected = load_model(str(full))(ids).logits
        got = AutoModelForCausalLM.from_pretrained(str(out))(ids).logits
    assert torch.equal(got, expected)
    assert "full fine-tuning" in (out / "README.md").read_text()


def test_moved_base_needs_base_model_path(run_dir, tmp_path, capsys):
    moved = tmp_path / "moved_base"
    shutil.copytree(run_dir / "base", moved)
    final = tmp_path / "final"
    shutil.copytree(run_dir / "run" / "final", final)
    config = json.loads((final / "adapter_config.json").read_text())
    config["base_model_name_or_path"] = str(tmp_path / "gone")
    (final / "adapter_config.json").write_text(json.dumps(config))
    summary = json.loads((final / "training_summary.json").read_text())
    summary["model_path"] = str(tmp_path / "gone")
    (final / "training_summary.json").write_text(json.dumps(summary))
    args = ["--model_path", str(final), "--output_dir", str(tmp_path / "out")]
    assert run_cli(export_script.main, args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--base_model_path" in err and "gone" in err
    assert not (tmp_path / "out").exists()
    assert run_cli(export_script.main, args + ["--base_model_path", str(moved)]) == 0


def test_adapter_on_another_base_is_one_line(run_dir, tmp_path, toy_tokenizer, capsys):
    other = tmp_path / "other_base"
    wider = ModelArchitecture(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                              intermediate_size=64, max_position_embeddings=128)
    build_model(wider, toy_tokenizer, seed=0).save_pretrained(str(other))
    capsys.readouterr()  # drop the save's progress bar
    args = ["--model_path", str(run_dir / "run" / "final"), "--output_dir", str(tmp_path / "o"),
            "--base_model_path", str(other)]
    assert run_cli(export_script.main, args) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    err = err.strip().splitlines()[-1]  # after transformers' "Loading weights" progress bar
    assert err.startswith("error: ") and "does not fit base" in err and "size mismatch" in err, err


@pytest.mark.parametrize("case", ["missing_model", "output_inside_model", "missing_eval_report"])
def test_user_errors_are_one_line(run_dir, tmp_path, capsys, case):
    final = str(run_dir / "run" / "final")
    args = {"missing_model": ["--model_path", str(tmp_path / "nope"), "--output_dir", str(tmp_path / "o")],
            "output_inside_model": ["--model_path", final, "--output_dir", f"{final}/export"],
            "missing_eval_report": ["--model_path", final, "--output_dir", str(tmp_path / "o"),
                                    "--eval_report", str(tmp_path / "none.json")]}[case]
    assert run_cli(export_script.main, args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err


def _final_with_template(run_dir: Path, tmp_path: Path, name: str) -> Path:
    final = tmp_path / name / "final"
    shutil.copytree(run_dir / "run" / "final", final)
    summary = json.loads((final / "training_summary.json").read_text())
    summary["template"]["name"] = summary["template"]["family"] = name
    (final / "training_summary.json").write_text(json.dumps(summary))
    return final


@pytest.mark.parametrize("name", ["instruct", "chat", "alpaca"])
def test_the_export_renders_the_format_it_was_trained_on(run_dir, tmp_path, name):
    from transformers import AutoTokenizer

    from utils.data.chat_jinja import CHAT_TEMPLATE_FILE
    from utils.data.templates import get_template
    from utils.data.tokenizer import load_tokenizer

    final = _final_with_template(run_dir, tmp_path, name)
    out = tmp_path / "out"
    assert export_script.main(["--model_path", str(final), "--output_dir", str(out)]) == 0
    assert (out / CHAT_TEMPLATE_FILE).is_file()
    exported = AutoTokenizer.from_pretrained(str(out))  # plain transformers, nothing of this repository
    training = get_template(name, load_tokenizer(final))
    for messages in CONVERSATIONS:
        assert exported.apply_chat_template(messages, tokenize=True, return_dict=False) == \
            training.encode(messages).input_ids
        assert exported.apply_chat_template(messages[:-1], tokenize=True, add_generation_prompt=True,
                                            return_dict=False) == training.encode_prompt(messages)
    card = (out / "README.md").read_text()
    assert f"template `{name}`" in card and "utils.data.templates" not in card


def test_card_front_matter_is_hub_metadata(run_dir, tmp_path):
    out = tmp_path / "out"
    assert export_script.main(["--model_path", str(run_dir / "run" / "final"), "--output_dir", str(out),
                               "--base_model_id", "HuggingFaceTB/SmolLM2-135M-Instruct",
                               "--license", "apache-2.0"]) == 0
    card = (out / "README.md").read_text()
    head, body = card.split("---\n")[1], card.split("---\n", 2)[2]
    for line in ('base_model: "HuggingFaceTB/SmolLM2-135M-Instruct"', 'license: "apache-2.0"',
                 'library_name: "transformers"', 'pipeline_tag: "text-generation"', '- "lora"'):
        assert line in head.splitlines(), (line, head)
    assert body.startswith("\n# out") or body.startswith("# out"), body[:40]
    default = (run_dir / "export" / "README.md").read_text().split("---\n")[1]
    assert "base_model" not in default and 'license: "unknown"' in default  # a local base: no Hub id guessed
