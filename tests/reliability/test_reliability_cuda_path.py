"""The CUDA code path, run on the CPU under SFT_EMULATE_CUDA_KERNELS: stand-ins of the varlen kernels hold each
real kernel's input contract (utils/model/kernels.py), so a run that would fail at the first forward on a GPU
fails here. Every architecture of the tests trains (full and LoRA, bf16 on and off), evaluates, generates and resumes
bit-identically through them; so does QLoRA; each kernel signature (torch 2.10, 2.11, 2.13, flash-attn, no
varlen kernel) trains."""
from __future__ import annotations

import json
import shutil

import pytest

import utils.model.kernels as kernels
from arch_helpers import ARCHITECTURES, NEWER_ARCHITECTURES, save_tiny_model
from train_helpers import count_stand_in_calls, emulate_cuda_kernels
from reliability_helpers import final_weights, newest_state, script, sft_argv, sft_config, sft_in_process
from utils.common.errors import run_cli
from utils.data.tokenizer import load_tokenizer

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture
def emulate(monkeypatch):
    """Switch the emulation on (``kind``) for one test; counts the stand-in kernel's calls."""
    calls = count_stand_in_calls(monkeypatch)

    def on(kind: str = "1") -> dict:
        emulate_cuda_kernels(monkeypatch, kind)
        return calls

    yield on
    emulate_cuda_kernels(monkeypatch, None)


def _model(work, model_type: str):
    path = work / f"model_{model_type}"
    if model_type == "llama":
        return work / "model"
    if not path.exists():
        save_tiny_model(model_type, load_tokenizer(work / "tokenizer"), path)
    return path


def _config(work, name: str, lora: bool, bf16: bool, steps: int):
    cfg = sft_config(work, name, lora=False, max_steps=steps, eval_steps=2, save_steps=2, bf16=bf16,
                     micro_batch_tokens=256)
    if lora:  # the architecture's own default targets
        config = json.loads(cfg.read_text())
        config["lora_config"] = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1}
        cfg.write_text(json.dumps(config))
    return cfg


def _train(work, capsys, name, model, lora, bf16, steps=2, *extra):
    out = work / "out" / name
    code = sft_in_process(sft_argv(work, _config(work, name, lora, bf16, steps), out, *extra, model=model))
    captured = capsys.readouterr()
    assert code == 0, captured.err[-3000:]
    return out, captured.out


@pytest.mark.parametrize("model_type", ("llama",) + ARCHITECTURES + NEWER_ARCHITECTURES)
def test_every_architecture_trains_evaluates_generates_and_resumes_on_the_cuda_path(work, model_type, emulate,
                                                                                    capsys):
    calls = emulate("1")
    model = _model(work, model_type)
    out, printed = _train(work, capsys, f"cuda_lora_{model_type}", model, True, True, 4)
    attention = next(line for line in printed.splitlines() if line.strip().startswith("attention"))
    uses_kernel = model_type not in ("gpt2", "gemma2")  # GPT-2's attention dropout sends its rows per example,
    capped = model_type == "gemma2"  # Gemma 2's soft-capping through its own eager attention (the plan says so)
    if uses_kernel:
        assert "emulated on the CPU" in attention and "q/k/v in bfloat16" in attention, attention
        assert calls["n"] > 0
    else:
        assert ("eager attention per example" in attention) == capped, attention
        assert calls["n"] == 0 or not capped  # GPT-2 evaluates through the kernel (no dropout there)
    assert (out / "samples.jsonl").read_text().count('"step": 4') == 1  # generation at the last evaluation
    state = newest_state(out)
    assert len(state["loss_history"]) == 4 and all(x == x for x in state["loss_history"])

    resumed = work / "out" / f"cuda_lora_{model_type}_resumed"  # the run cut after checkpoint-2, then resumed
    shutil.copytree(out, resumed)
    shutil.rmtree(resumed / "final")
    shutil.rmtree(resumed / "checkpoint-4")
    assert sft_in_process(sft_argv(work, work / f"cuda_lora_{model_type}.json", resumed,
                                   "--resume_from_checkpoint", "auto", model=model)) == 0, capsys.readouterr().err
    a, b = final_weights(out), final_weights(resumed)
    assert a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
    capsys.readouterr()

    _train(work, capsys, f"cuda_full_{model_type}", model, False, True)
    before = calls["n"]
    _, printed = _train(work, capsys, f"cuda_fp32_{model_type}", model, True, False)
    assert calls["n"] == before  # float32: the kernel cannot take it, SDPA per example does
    fp32_line = next(line for line in printed.splitlines() if line.strip().startswith("attention"))
    assert ("eager attention" if capped else "SDPA per example") in fp32_line, fp32_line
    assert "float32" in fp32_line or not uses_kernel, fp32_line

    report = work / "out" / f"cuda_eval_{model_type}"
    code = run_cli(script("04_evaluate_sft").main, [
        "--model_path", str(out / "final"), "--output_dir", str(report), "--data_dirs", str(work / "data" / "instruct"),
        "--config", str(work / f"cuda_lora_{model_type}.json"), "--max_new_tokens", "4", "--no_progress"])
    assert code == 0, capsys.readouterr().err[-3000:]
    assert json.loads((report / "eval_report.json").read_text())["tuned"]["val_loss"] > 0


@pytest.mark.parametrize("kind", ("torch-2.10", "torch-2.11", "torch-2.13", "flash-attn", "sdpa"))
def test_each_kernel_signature_trains(work, kind, emulate, capsys):
    calls = emulate(kind)
    out, printed = _train(work, capsys, f"cuda_kind_{kind}", work / "model", True, True)
    assert f"{kernels.EMULATE_ENV}={kind}" in printed
    assert (calls["n"] > 0) == (kind != "sdpa")
    assert len(newest_state(out)["loss_history"]) == 2


def test_qlora_trains_on_the_cuda_path(work, emulate, capsys):
    pytest.importorskip("bitsandbytes")
    calls = emulate("1")
    cfg = _config(work, "cuda_qlora", True, True, 2)
    config = json.loads(cfg.read_text())
    config["quantization"] = {"load_in_4bit": True, "bnb_4bit_compute_dtype": "bfloat16"}
    cfg.write_text(json.dumps(config))
    out = work / "out" / "cuda_qlora"
    assert sft_in_process(sft_argv(work, cfg, out)) == 0, capsys.readouterr().err[-3000:]
    assert calls["n"] > 0 and len(newest_state(out)["loss_history"]) == 2


def test_an_unknown_emulation_is_one_line(work, monkeypatch, capsys):
    monkeypatch.setenv(kernels.EMULATE_ENV, "torch-9")
    kernels.cuda_kernel.cache_clear()
    out = work / "out" / "cuda_unknown"
    assert sft_in_process(sft_argv(work, _config(work, "cuda_unknown", True, True, 2), out)) == 2
    err = capsys.readouterr().err
    assert "SFT_EMULATE_CUDA_KERNELS='torch-9': not a kernel this trainer emulates" in err and "Traceback" not in err
    assert not out.exists()
    monkeypatch.delenv(kernels.EMULATE_ENV)
    kernels.cuda_kernel.cache_clear()


@pytest.mark.parametrize("model_type", ARCHITECTURES + NEWER_ARCHITECTURES)
def test_qlora_trains_every_architecture_and_quantizes_its_layers(work, model_type, capsys):
    """A 4-bit base under the adapter (bitsandbytes on the CPU) for every architecture: its linear layers load in
    4 bits, the adapter takes the architecture's own default targets, two steps train to a finite loss."""
    pytest.importorskip("bitsandbytes")
    model = _model(work, model_type)
    cfg = _config(work, f"qlora_{model_type}", True, False, 2)
    config = json.loads(cfg.read_text())
    config["quantization"] = {"load_in_4bit": True, "bnb_4bit_compute_dtype": "float32"}
    cfg.write_text(json.dumps(config))
    out = work / "out" / f"qlora_{model_type}"
    code = sft_in_process(sft_argv(work, cfg, out, model=model))
    captured = capsys.readouterr()
    if model_type == "gpt2":  # GPT-2's projections are Conv1D, which bitsandbytes cannot hold: refused, not trained
        assert code == 2 and captured.err.strip().endswith(
            "c_attn is a Conv1D layer in this model, which bitsandbytes cannot hold in 4 bits; remove the "
            "quantization block (plain LoRA) or target nn.Linear layers only") and not out.exists()
        return
    assert code == 0, captured.err[-3000:]
    assert "4-bit" in next(line for line in captured.out.splitlines() if line.strip().startswith("base weights"))
    losses = newest_state(out)["loss_history"]
    assert len(losses) == 2 and all(x == x and x < 1e4 for x in losses)
