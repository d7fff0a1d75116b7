"""Pre-training from a prepared text corpus (01_prepare_text_corpus.py, then 01_pretrain.py --data_dirs): the same
run as tokenizing data.sources at launch, and the corpus checks of 03 (tokenizer, every shard) before anything is
written."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reliability_helpers import assert_same_run, error_line, metrics, script, write_json
from utils.common.errors import run_cli


def run_script(stem: str, argv: list[str]) -> int:
    return run_cli(script(stem).main, argv)


def tree(path: Path) -> dict[str, bytes]:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def text_work(work, tmp_path_factory) -> Path:
    """A pre-training config over a directory of text files and its corpus prepared in partitions of 2 KB."""
    root = tmp_path_factory.mktemp("text_work")
    docs = root / "docs"
    docs.mkdir()
    for i in range(12):
        (docs / f"{i:02d}.txt").write_text(f"Paragraph {i} explains how step {i} follows step {i - 1}. " * 30)
    write_json(root / "pretrain.json", {
        "name": "text", "model": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
                                  "num_key_value_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64},
        "data": {"sources": [{"name": "docs", "type": "text_files", "paths": [str(docs)]}],
                 "sequence_length": 32, "val_ratio": 0.2},
        "training_params": {"max_steps": 6, "per_device_train_batch_size": 2, "bf16": False, "logging_steps": 1,
                            "eval_steps": 3, "save_steps": 0, "learning_rate": 3e-3, "warmup_steps": 1}})
    assert run_script("01_prepare_text_corpus", [*common(work, root), "--output_dir", str(root / "corpus"),
                                                 "--num_proc", "1", "--partition_mb", "0.002"]) == 0
    return root


def common(work: Path, root: Path) -> list[str]:
    return ["--config", str(root / "pretrain.json"), "--tokenizer_path", str(work / "tokenizer")]


def test_training_from_the_prepared_corpus_is_the_run_that_tokenizes_at_launch(work, text_work, tmp_path, capsys):
    manifest = json.loads((text_work / "corpus" / "manifest.json").read_text())
    assert manifest["splits"]["train"]["num_shards"] > 2 and manifest["splits"]["val"]["documents"] > 0
    assert run_script("01_pretrain", [*common(work, text_work), "--output_dir", str(tmp_path / "launch")]) == 0
    assert "data.sources tokenized at launch" in capsys.readouterr().out
    assert run_script("01_pretrain", [*common(work, text_work), "--output_dir", str(tmp_path / "prepared"),
                                      "--data_dirs", str(text_work / "corpus")]) == 0
    assert f"prepared corpora {text_work / 'corpus'} (verified" in capsys.readouterr().out
    rows = metrics(tmp_path / "prepared")
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 7))
    assert any("eval/loss" in r for r in rows)
    assert_same_run(tmp_path / "launch", tmp_path / "prepared")
    assert not (tmp_path / "prepared" / "data_cache").exists()


def copy_of(corpus: Path, to: Path) -> Path:
    shutil.copytree(corpus, to)
    return to


def test_a_tampered_shard_is_refused_before_the_output_is_claimed(work, text_work, tmp_path, capsys):
    corpus = copy_of(text_work / "corpus", tmp_path / "corpus")
    shard = corpus / "train_00001.bin"
    data = bytearray(shard.read_bytes())
    data[-2] ^= 0xFF
    shard.write_bytes(bytes(data))
    before, out = tree(corpus), tmp_path / "run"
    assert run_script("01_pretrain", [*common(work, text_work), "--output_dir", str(out),
                                      "--data_dirs", str(corpus)]) == 2
    assert error_line(capsys) == (f"error: {shard}: sha256 differs from manifest.json (file changed or corrupt); "
                                  "re-run the text prepare stage (make prepare-text-corpus) to rebuild it")
    assert tree(corpus) == before and not out.exists()


def test_a_corpus_of_another_tokenizer_is_refused(work, text_work, tmp_path, capsys):
    other = shutil.copytree(work / "tokenizer", tmp_path / "other_tokenizer")
    config = json.loads((other / "tokenizer_config.json").read_text())
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 12345}))
    corpus, out = text_work / "corpus", tmp_path / "run"
    before = tree(corpus)
    assert run_script("01_pretrain", ["--config", str(text_work / "pretrain.json"), "--tokenizer_path", str(other),
                                      "--output_dir", str(out), "--data_dirs", str(corpus)]) == 2
    assert error_line(capsys).startswith("error: Tokenizer mismatch between datasets!")
    assert tree(corpus) == before and not out.exists()


def test_an_sft_corpus_is_not_a_text_corpus(work, text_work, tmp_path, capsys):
    out = tmp_path / "run"
    assert run_script("01_pretrain", [*common(work, text_work), "--output_dir", str(out),
                                      "--data_dirs", str(work / "data" / "chat")]) == 2
    line = error_line(capsys)
    assert f"{work / 'data' / 'chat'} is an SFT corpus (scripts/02_prepare_sft_corpus.py), not a raw-text corpus" \
        in line and "mix them into pre-training with data.supervised" in line
    assert not out.exists()


def test_the_prepare_script_refuses_bad_flags_in_one_line(work, text_work, tmp_path, capsys):
    argv = [*common(work, text_work), "--output_dir", str(tmp_path / "c")]
    assert run_script("01_prepare_text_corpus", [*argv, "--partition_mb", "0"]) == 2
    assert error_line(capsys) == "error: --partition_mb '0': give a number > 0"
    assert run_script("01_prepare_text_corpus", [*argv, "--ray_address", "127.0.0.1:1"]) == 2
    assert error_line(capsys).startswith("error: --ray_address: only used with --executor ray")
    assert run_script("01_prepare_text_corpus", [*argv[:2], "--tokenizer_path", str(tmp_path / "none"),
                                                 *argv[4:]]) == 2
    assert str(tmp_path / "none") in error_line(capsys)
    assert not (tmp_path / "c").exists()
