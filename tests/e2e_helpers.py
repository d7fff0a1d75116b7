"""Helpers for the end-to-end tests: run the real scripts, write configs."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from paths import ROOT
from reliability_helpers import write_json

TINY_MODEL = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
              "intermediate_size": 128, "max_position_embeddings": 512}


def run(*args: str, cwd: Path, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"{args[0]} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def training_params(**overrides) -> dict:
    params = {"learning_rate": 0.003, "max_steps": 6, "per_device_train_batch_size": 4, "warmup_steps": 1,
              "logging_steps": 1, "eval_steps": 3, "save_steps": 3, "save_total_limit": 3, "bf16": False,
              "seed": 7}
    params.update(overrides)
    return params


def build_pipeline_work(work: Path) -> Path:
    """Demo data, tokenizer and a pre-trained tiny model, shared by this module's tests."""
    run(str(ROOT / "scripts/generate_demo_data.py"), "--output_dir", "data/demo", "--num_train", "400",
        "--num_test", "60", cwd=work)
    write_json(work / "tok.json", {
        "name": "spm_test", "vocab_size": 800, "output_dir": "checkpoints/tokenizer", "max_chars": 400000,
        "sources": [{"type": "text_files", "paths": ["data/demo/corpus/pydoc"], "weight": 2},
                    {"type": "jsonl", "paths": ["data/demo/instruct/train.jsonl"], "fields": ["messages.content"]}]})
    proc = run(str(ROOT / "scripts/00_train_tokenizer.py"), "--config", "tok.json", cwd=work)
    assert "round trip ok" in proc.stdout
    write_json(work / "pre.json", {
        "name": "t", "model": TINY_MODEL,
        "data": {"sources": [{"type": "text_files", "paths": ["data/demo/corpus/pydoc"]}],
                 "sequence_length": 64, "val_ratio": 0.1},
        "training_params": training_params(max_steps=12, per_device_train_batch_size=8, eval_steps=6)})
    proc = run(str(ROOT / "scripts/01_pretrain.py"), "--config", "pre.json", "--tokenizer_path",
               "checkpoints/tokenizer/spm_test", "--output_dir", "checkpoints/pretrain/t", cwd=work)
    work.joinpath("pretrain.log").write_text(proc.stdout)
    return work


