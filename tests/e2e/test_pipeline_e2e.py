"""End to end on CPU with a tiny model: 00 tokenizer → 01 pre-train (+ CPT LoRA) → 02 prepare → 03 SFT.

Each stage runs as a user runs it (a subprocess of the real script); the assertions read
what it wrote and what it printed.
"""
from __future__ import annotations

import json

from e2e_helpers import ROOT, TINY_MODEL, run, training_params, write_json


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


def test_pretraining_with_a_supervised_corpus_keeps_its_masks(pipeline_work, tmp_path):
    """data.supervised mixes a prepared SFT corpus into pre-training; its prompts stay unsupervised."""
    write_json(pipeline_work / "worked.json", {
        "name": "worked", "template": "chat", "output_params": {"sequence_length": 128, "train_ratio": 0.9},
        "datasets": [{"name": "tasks", "type": "jsonl", "dataset_name": "data/demo/instruct/train.jsonl",
                      "format": "messages"}]})
    run(str(ROOT / "scripts/02_prepare_sft_corpus.py"), "--config", "worked.json", "--tokenizer_path",
        "checkpoints/tokenizer/spm_test", "--output_dir", "data/sft_processed/worked", "--num_proc", "1",
        cwd=pipeline_work)
    write_json(pipeline_work / "pre_mix.json", {
        "name": "mix", "model": TINY_MODEL,
        "data": {"sources": [{"type": "text_files", "paths": ["data/demo/corpus/pydoc"]}],
                 "sequence_length": 64, "val_ratio": 0.1, "text_weight": 1.0,
                 "supervised": [{"data_dir": "data/sft_processed/worked", "weight": 3.0}]},
        "training_params": training_params(max_steps=6, per_device_train_batch_size=8, eval_steps=6)})
    out = tmp_path / "mix"
    proc = run(str(ROOT / "scripts/01_pretrain.py"), "--config", "pre_mix.json", "--tokenizer_path",
               "checkpoints/tokenizer/spm_test", "--output_dir", str(out), cwd=pipeline_work)
    assert "supervised worked" in proc.stdout and "weight 3.0" in proc.stdout
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    final_eval = [m for m in metrics if "eval/loss" in m][-1]
    assert "eval/worked/loss" in final_eval and "eval/val/loss" in final_eval
    summary = json.loads((out / "final" / "training_summary.json").read_text())
    assert set(summary["data_hashes"]) == {"text", "worked"}
    # 8 examples per step drawn 1:3 text:supervised; a step of text windows alone would hold 8 * 63 targets
    steps = [m for m in metrics if "supervised_tokens" in m]
    assert steps[-1]["supervised_tokens"] < 6 * 8 * 63
    # a corpus made with another tokenizer is refused in one line, before training
    bad = write_json(pipeline_work / "pre_bad.json", {
        "name": "bad", "model": TINY_MODEL,
        "data": {"sources": [{"type": "text_files", "paths": ["data/demo/corpus/pydoc"]}], "sequence_length": 64,
                 "supervised": [{"data_dir": "data/nope"}]},
        "training_params": training_params(max_steps=2)})
    proc = run(str(ROOT / "scripts/01_pretrain.py"), "--config", bad.name, "--tokenizer_path",
               "checkpoints/tokenizer/spm_test", "--output_dir", str(tmp_path / "bad"), cwd=pipeline_work,
               check=False)
    assert proc.returncode != 0 and "data/nope" in proc.stderr and "Traceback" not in proc.stderr
