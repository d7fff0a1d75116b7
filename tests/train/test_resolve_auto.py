"""The hardware-dependent auto switches (bf16, attention_fp32): a loaded config keeps them at auto, a run resolves
them for its device as it starts (``start.resolve_auto``), prints where each value came from and records it."""
from __future__ import annotations

import json

import pytest
import torch

import utils.parallel.accelerator as accelerator
from train_helpers import run_training
from utils.model import kernels
from utils.train.config import TrainingParams
from utils.train.start import resolve_auto


def params(**given) -> TrainingParams:
    return TrainingParams(per_device_train_batch_size=2, **given)


def cpu_with(monkeypatch, *flags: str) -> None:
    """This process sees a CPU whose /proc/cpuinfo lists ``flags``."""
    monkeypatch.setattr(accelerator, "cpu_flags", lambda: ["fma", "avx2", *flags])
    monkeypatch.delenv(kernels.EMULATE_ENV, raising=False)


def test_a_loaded_config_keeps_auto_and_cannot_train_until_resolved():
    loaded = params()
    assert (loaded.bf16, loaded.attention_fp32) == ("auto", "auto")
    with pytest.raises(ValueError, match=r"training_params bf16, attention_fp32 still auto: resolve them at run start"):
        loaded.mixed_precision()


@pytest.mark.parametrize("flag", ["avx512_bf16", "amx_bf16"])
def test_a_cpu_with_bf16_matmul_resolves_bf16_and_fp32_attention_on(monkeypatch, flag):
    cpu_with(monkeypatch, flag)
    resolved, auto = resolve_auto(params(), torch.device("cpu"))
    assert (resolved.bf16, resolved.attention_fp32, resolved.mixed_precision()) == (True, True, "bf16")
    assert auto == {"bf16": {"value": True, "why": f"this CPU has {flag}"},
                    "attention_fp32": {"value": True,
                                       "why": "bf16 on the CPU, where float32 attention kernels are faster"}}


def test_a_cpu_without_bf16_matmul_resolves_both_off(monkeypatch):
    cpu_with(monkeypatch)
    resolved, auto = resolve_auto(params(), torch.device("cpu"))
    assert (resolved.bf16, resolved.attention_fp32, resolved.mixed_precision()) == (False, False, "no")
    assert auto["bf16"] == {"value": False,
                            "why": "this CPU has no avx512_bf16 or amx_bf16 (bf16 matmul is slower than fp32 here)"}
    assert auto["attention_fp32"] == {"value": False, "why": "bf16 off"}


def test_explicit_values_are_kept_and_not_reported_as_auto(monkeypatch):
    cpu_with(monkeypatch)
    resolved, auto = resolve_auto(params(bf16=True), torch.device("cpu"))
    assert (resolved.bf16, resolved.attention_fp32) == (True, True)
    assert list(auto) == ["attention_fp32"]
    resolved, auto = resolve_auto(params(bf16=True, attention_fp32=False), torch.device("cpu"))
    assert (resolved.bf16, resolved.attention_fp32, auto) == (True, False, {})


def test_fp16_turns_auto_bf16_off(monkeypatch):
    cpu_with(monkeypatch, "avx512_bf16")
    resolved, auto = resolve_auto(params(fp16=True), torch.device("cpu"))
    assert (resolved.bf16, resolved.fp16, auto["bf16"]["why"]) == (False, True, "fp16 is on")


def test_a_bf16_gpu_resolves_bf16_on_and_keeps_attention_in_bf16(monkeypatch):
    """The CUDA path: bf16 where the GPU supports it, attention in the kernels' own bf16 (the varlen kernel takes
    float16/bfloat16 only)."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 80GB HBM3")
    resolved, auto = resolve_auto(params(), torch.device("cuda"))
    assert (resolved.bf16, resolved.attention_fp32) == (True, False)
    assert auto["bf16"]["why"] == "NVIDIA H100 80GB HBM3 supports bf16"
    assert auto["attention_fp32"]["why"] == "the CUDA path (bf16 attention kernels)"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    resolved, auto = resolve_auto(params(), torch.device("cuda"))
    assert (resolved.bf16, resolved.attention_fp32, resolved.mixed_precision()) == (False, False, "no")


def test_the_cuda_emulation_on_the_cpu_keeps_attention_in_bf16(monkeypatch):
    cpu_with(monkeypatch, "avx512_bf16")
    monkeypatch.setenv(kernels.EMULATE_ENV, "1")
    resolved, _ = resolve_auto(params(), torch.device("cpu"))
    assert (resolved.bf16, resolved.attention_fp32) == (True, False)


def test_a_run_prints_and_records_its_resolved_switches(monkeypatch, tmp_path):
    cpu_with(monkeypatch)
    state, _ = run_training(tmp_path / "run", batch=2, steps=2, save_steps=2, bf16="auto")
    saved = json.loads((tmp_path / "run" / "checkpoint-2" / "training_state.json").read_text())
    assert saved["resolved_auto"] == {
        "bf16": {"value": False,
                 "why": "this CPU has no avx512_bf16 or amx_bf16 (bf16 matmul is slower than fp32 here)"},
        "attention_fp32": {"value": False, "why": "bf16 off"}}
    plan = saved["plan"]
    assert plan["precision"]["from"].startswith("training_params.bf16 auto: off, this CPU has no avx512_bf16")
    assert plan["attention"]["from"] == "packed rows on cpu (training_params.attention_fp32 auto: off, bf16 off)"
