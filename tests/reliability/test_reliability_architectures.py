"""Models beyond the Llama layout through the real CLIs: each architecture of the tests trains (full and LoRA with
its default targets), evaluates with generation, exports and reloads with plain transformers; a type whose
attention does not go through the interface is refused before anything is written."""
from __future__ import annotations

import json

import pytest

from arch_helpers import ARCHITECTURES, NEWER_ARCHITECTURES, save_tiny_model
from reliability_helpers import error_line, script, sft_argv, sft_config, sft_in_process, snapshot
from utils.common.errors import run_cli
from utils.data.tokenizer import load_tokenizer

_LLAMA = ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
LINEAR_LAYERS = {"gpt2": ["c_attn", "c_fc", "c_proj"], "phi3": ["down_proj", "gate_up_proj", "o_proj", "qkv_proj"],
                 "gpt_neox": ["dense", "dense_4h_to_h", "dense_h_to_4h", "query_key_value"],
                 **dict.fromkeys(("qwen2", "gemma", "mistral", "qwen3", "gemma2", "gemma3_text", "olmo2", "smollm3",
                                  "granite"), _LLAMA),
                 "phi": ["dense", "fc1", "fc2", "k_proj", "q_proj", "v_proj"],
                 "starcoder2": ["c_fc", "c_proj", "k_proj", "o_proj", "q_proj", "v_proj"],
                 # MoE: the fused experts and the router are parameters, not linear layers (frozen, said in the plan)
                 **dict.fromkeys(("qwen3_moe", "mixtral"), ["k_proj", "o_proj", "q_proj", "v_proj"])}
"""Every linear layer of each decoder: what default LoRA targets must be (the hand-kept table they replace)."""


@pytest.mark.parametrize("model_type", ARCHITECTURES + NEWER_ARCHITECTURES)
def test_each_architecture_trains_evaluates_and_exports(work, model_type, capsys):
    model = save_tiny_model(model_type, load_tokenizer(work / "tokenizer"), work / f"model_{model_type}")
    short = {"max_steps": 2, "eval_steps": 2, "save_steps": 2, "micro_batch_tokens": 256}
    full_cfg = sft_config(work, f"arch_full_{model_type}", lora=False, **short)
    lora_cfg = sft_config(work, f"arch_lora_{model_type}", lora=False, **short)
    config = json.loads(lora_cfg.read_text())
    config["lora_config"] = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0}  # targets left out: the defaults
    lora_cfg.write_text(json.dumps(config))
    for kind, cfg in (("full", full_cfg), ("lora", lora_cfg)):
        out = work / "out" / f"arch_{kind}_{model_type}"
        assert sft_in_process(sft_argv(work, cfg, out, model=model)) == 0, capsys.readouterr().err[-2000:]
        printed = capsys.readouterr().out
        state = json.loads((out / "checkpoint-2" / "training_state.json").read_text())
        assert all(loss == loss for loss in state["loss_history"]) and len(state["loss_history"]) == 2
        if kind == "lora":
            adapter = json.loads((out / "final" / "adapter_config.json").read_text())
            expected = LINEAR_LAYERS[model_type]
            assert sorted(adapter["target_modules"]) == sorted(expected)
            recorded = state["config"]["lora_config"]["target_modules"]  # what a resume compares
            assert recorded == sorted(expected)
            assert f"linear layer of the {model_type} decoder" in printed
            assert f"{model_type}: packed == alone (losses, gradients, generation" in printed
        report_dir = work / "out" / f"eval_{kind}_{model_type}"
        code = run_cli(script("04_evaluate_sft").main, [
            "--model_path", str(out / "final"), "--output_dir", str(report_dir),
            "--data_dirs", str(work / "data" / "instruct"), "--config", str(cfg), "--max_new_tokens", "4",
            "--no_progress"])
        assert code == 0, capsys.readouterr().err[-2000:]
        report = json.loads((report_dir / "eval_report.json").read_text())
        assert "Traceback" not in capsys.readouterr().err
        assert json.dumps(report).count("NaN") == 0
        export = work / "out" / f"export_{kind}_{model_type}"
        code = run_cli(script("05_export_model").main, ["--model_path", str(out / "final"), "--output_dir",
                                                         str(export), "--dtype", "float32"])  # the merge, exactly
        assert code == 0, capsys.readouterr().err[-2000:]
        assert json.loads((export / "config.json").read_text())["model_type"] == model_type
        assert not (export / "adapter_config.json").exists()
        _reloads_with_plain_transformers(export, out / "final", model, kind)


def _reloads_with_plain_transformers(export, final, base, kind):
    """The export loads with plain transformers and computes what the trained model does (its LoRA merged)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    ids = torch.randint(5, 200, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        got = AutoModelForCausalLM.from_pretrained(str(export)).eval()(ids).logits
        trained = (PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(base)), str(final))
                   if kind == "lora" else AutoModelForCausalLM.from_pretrained(str(final))).eval()
        want = trained(ids).logits
        untrained = AutoModelForCausalLM.from_pretrained(str(base)).eval()(ids).logits
    assert torch.isfinite(got).all() and (got - want).abs().max() <= 1e-4 * max(1.0, float(want.abs().max()))
    assert kind == "lora" or (untrained - want).abs().max() > 0  # full training moved the weights


def test_an_unsupported_architecture_is_refused_before_anything_is_written(work, capsys):
    """Bloom (ALiBi positions, which packed attention would drop) is one line naming the supported types;
    so are Llama LoRA targets on a GPT-2 model (naming its layers). The output dir and its lock are never
    created, and an existing run dir is unchanged."""
    from transformers import BloomConfig, BloomForCausalLM

    tokenizer = load_tokenizer(work / "tokenizer")
    model = work / "model_bloom"
    BloomForCausalLM(BloomConfig(vocab_size=len(tokenizer), hidden_size=32, n_layer=1, n_head=4)).save_pretrained(model)
    cfg = sft_config(work, "arch_bloom", lora=False, max_steps=2)
    out = work / "out" / "arch_bloom"
    assert sft_in_process(sft_argv(work, cfg, out, model=model)) == 2
    line = error_line(capsys)
    assert f"{model}: model_type 'bloom' cannot train packed: its attention does not go through" in line
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    llama_targets = sft_config(work, "arch_llama_targets", lora=True, max_steps=2)  # q_proj, v_proj, up_proj
    gpt2 = save_tiny_model("gpt2", tokenizer, work / "model_gpt2_refused")
    assert sft_in_process(sft_argv(work, llama_targets, out, model=gpt2)) == 2
    line = error_line(capsys)
    assert "lora_config.target_modules: ['q_proj', 'v_proj', 'up_proj'] not found" in line and "c_attn" in line
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    existing = work / "out" / "arch_full_gpt2"
    if existing.is_dir():
        before = snapshot(existing)
        assert sft_in_process(sft_argv(work, cfg, existing, model=model) + ["--resume_from_checkpoint", "auto"]) == 2
        assert "model_type 'bloom'" in error_line(capsys)
        assert snapshot(existing) == before
