"""End to end on CPU with a tiny model: 00 tokenizer → 01 pre-train (+ CPT LoRA) → 02 prepare → 03 SFT.

Each stage runs as a user runs it (a subprocess of the real script); the assertions read
what it wrote and what it printed.
"""
from __future__ import annotations

import json

from e2e_helpers import ROOT, run, write_json


def test_tokenizer_loads_with_plain_transformers(pipeline_work):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(pipeline_work / "checkpoints/tokenizer/spm_test")
    assert (tok.bos_token, tok.eos_token, tok.pad_token, tok.unk_token) == ("<s>", "</s>", "<pad>", "<unk>")
    assert {"<|im_start|>", "<|im_end|>"} <= set(tok.all_special_tokens)
    text = tok.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
    assert (pipeline_work / "checkpoints/tokenizer/spm_test.model").is_file()


def test_pretraining_lowers_validation_loss_and_loads(pipeline_work):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log = pipeline_work.joinpath("pretrain.log").read_text()
    line = next(line for line in log.splitlines() if line.startswith("validation loss:"))
    before, after = (float(x) for x in line.split(":")[1].split("after")[0].split("->"))
    assert after < before - 0.5, line
    final = pipeline_work / "checkpoints/pretrain/t/final"
    model = AutoModelForCausalLM.from_pretrained(final)
    tok = AutoTokenizer.from_pretrained(final)
    ids = tok("The class", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5
    assert (final / "model.safetensors").is_file() and (final / "training_summary.json").is_file()
    assert (pipeline_work / "checkpoints/pretrain/t/loss.png").is_file()
    metrics = [json.loads(x) for x in (pipeline_work / "checkpoints/pretrain/t/metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "loss" in m] == list(range(1, 13))
    assert torch.isfinite(torch.tensor([m["loss"] for m in metrics if "loss" in m])).all()


def test_cpt_with_lora_on_the_pretrained_model(pipeline_work):
    from transformers import AutoModelForCausalLM

    config = json.loads((pipeline_work / "pre.json").read_text())
    config["name"] = "cpt"
    config["lora_config"] = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    config["training_params"]["max_steps"] = 4
    write_json(pipeline_work / "cpt.json", config)
    proc = run(str(ROOT / "scripts/01_pretrain.py"), "--config", "cpt.json", "--tokenizer_path",
               "checkpoints/tokenizer/spm_test", "--model_path", "checkpoints/pretrain/t/final",
               "--output_dir", "checkpoints/pretrain/cpt", cwd=pipeline_work)
    assert "LoRA adapter" in proc.stdout
    merged = AutoModelForCausalLM.from_pretrained(pipeline_work / "checkpoints/pretrain/cpt/final")
    base = AutoModelForCausalLM.from_pretrained(pipeline_work / "checkpoints/pretrain/t/final")
    q_merged = merged.model.layers[0].self_attn.q_proj.weight
    assert not q_merged.equal(base.model.layers[0].self_attn.q_proj.weight)  # the adapter was merged in
    assert merged.model.layers[0].mlp.up_proj.weight.equal(base.model.layers[0].mlp.up_proj.weight)


def test_bad_tokenizer_path_is_one_line(pipeline_work):
    proc = run(str(ROOT / "scripts/01_pretrain.py"), "--config", "pre.json", "--tokenizer_path", "nope",
               cwd=pipeline_work, check=False)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: nope: tokenizer not found")
