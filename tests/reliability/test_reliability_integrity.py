"""Reliability: damaged or mismatched inputs to training are refused with one line naming what is wrong
(a flipped byte or a missing shard, another tokenizer, a model too small for the vocabulary, a checkpoint
from other data, another model, with a damaged file or with bit rot that still loads); none of them trains
silently on wrong data."""
from __future__ import annotations

import json
import os
import shutil

import pytest
import torch

from reliability_helpers import (error_line, final_weights, reference_run, sft_argv, sft_config, sft_in_process,
                                 snapshot, write_json)
from utils.common.errors import UserError
from utils.data.shards import verify_data_dir


def copy_data(work, tmp_path, name="instruct"):
    dst = tmp_path / name
    shutil.copytree(work / "data" / name, dst)
    return dst


def train(work, tmp_path, *extra, data=("instruct", "chat"), lora=True, **kwargs) -> int:
    config = sft_config(work, "rel_lora" if lora else "rel_full", lora=lora)
    return sft_in_process(sft_argv(work, config, tmp_path / "out", *extra, data=data,
                                   weights=None, **kwargs))


def test_one_flipped_byte_in_a_shard_is_refused_naming_the_file(work, tmp_path, capsys):
    from utils.sampling.example_store import load_sft_store

    data = copy_data(work, tmp_path)
    load_sft_store(data, "train", verify_data_dir(data))  # as an earlier run would: the token cache exists
    assert any((data / ".cache").glob("train-*.npy"))
    shard = data / "train_00001.jsonl"
    raw = bytearray(shard.read_bytes())
    at = raw.index(b"[", len(raw) // 2) + 1  # a digit inside input_ids: still valid JSON, other tokens
    raw[at] = ord("1") if raw[at] != ord("1") else ord("2")
    shard.write_bytes(bytes(raw))
    assert train(work, tmp_path, data=(data, "chat")) == 2
    assert error_line(capsys) == (f"error: {shard}: sha256 differs from manifest.json (file changed or corrupt); "
                                  "re-run the prepare stage (make prepare-sft-corpus) to rebuild it")


def test_a_missing_shard_is_refused_naming_the_file(work, tmp_path, capsys):
    data = copy_data(work, tmp_path, "chat")
    (data / "val_00000.jsonl").unlink()
    assert train(work, tmp_path, data=("instruct", data)) == 2
    assert error_line(capsys).startswith(f"error: {data / 'val_00000.jsonl'}: shard listed in manifest.json "
                                         "is missing")


def test_data_from_another_tokenizer_is_refused(work, tmp_path, capsys):
    from utils.data.tokenizer import load_tokenizer

    other = tmp_path / "other_tokenizer"
    tok = load_tokenizer(work / "tokenizer")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", "<|tool|>"]})
    tok.save_pretrained(other)
    assert train(work, tmp_path, tokenizer=other) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: Tokenizer mismatch between datasets! {work / 'data' / 'instruct'} was "
                           "prepared with tokenizer") and "re-run the prepare stage" in line

    data = copy_data(work, tmp_path, "chat")  # a manifest that says another tokenizer made it
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["tokenizer_metadata"]["tokenizer_sha256"] = "0" * 64
    write_json(data / "manifest.json", manifest)
    assert train(work, tmp_path, data=("instruct", data)) == 2
    assert error_line(capsys).startswith(f"error: Tokenizer mismatch between datasets! {data} was prepared "
                                         f"with tokenizer {'0' * 64}")


def test_a_model_with_a_smaller_vocabulary_than_the_tokenizer_is_refused(work, tmp_path, capsys):
    from transformers import LlamaConfig, LlamaForCausalLM

    small = tmp_path / "small_vocab_model"
    LlamaForCausalLM(LlamaConfig(vocab_size=500, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(small)
    assert train(work, tmp_path, model=small) == 2
    assert error_line(capsys) == (f"error: {small}: the model's embedding has 500 rows but the tokenizer "
                                  f"{work / 'tokenizer'} has 1000 tokens; use the tokenizer the model was "
                                  "trained with")


def resumable_copy(work, tmp_path, mode: str):
    out = tmp_path / "out"
    shutil.copytree(reference_run(work, mode), out)
    shutil.rmtree(out / "final")
    return out


def test_a_checkpoint_from_other_data_is_refused(work, tmp_path, capsys):
    resumable_copy(work, tmp_path, "lora")
    assert train(work, tmp_path, "--resume_from_checkpoint", "auto", data=("instruct",)) == 2
    assert "checkpoint was trained with other data hashes (not in this run: chat)" in error_line(capsys)

    changed = copy_data(work, tmp_path, "chat")  # same name, one example changed and re-hashed
    manifest = json.loads((changed / "manifest.json").read_text())
    shard = changed / "train_00000.jsonl"
    shard.write_text(shard.read_text().replace('"input_ids":[', '"input_ids":[5,', 1)
                     .replace('"labels":[', '"labels":[-100,', 1))
    from utils.common.hashing import sha256_file

    manifest["splits"]["train"]["shards"][0]["sha256"] = sha256_file(shard)
    write_json(changed / "manifest.json", manifest)
    assert train(work, tmp_path, "--resume_from_checkpoint", "auto", data=("instruct", changed)) == 2
    assert "checkpoint was trained with other data hashes (changed: chat)" in error_line(capsys)


@pytest.mark.parametrize("case", ["lora checkpoint, full run", "full checkpoint, lora run", "other model shape"])
def test_a_checkpoint_of_another_model_is_refused(work, tmp_path, capsys, case):
    from utils.model.modeling import ModelArchitecture, build_model
    from utils.data.tokenizer import load_tokenizer

    out = resumable_copy(work, tmp_path, "lora" if case.startswith("lora") else "full")
    model = None
    if case == "other model shape":
        model = tmp_path / "wider"
        arch = ModelArchitecture(hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                                 num_key_value_heads=2, intermediate_size=64, max_position_embeddings=256)
        build_model(arch, load_tokenizer(work / "tokenizer"), seed=0).save_pretrained(model)
    lora = case.startswith("full checkpoint")
    assert train(work, tmp_path, "--resume_from_checkpoint", "auto", lora=lora, model=model) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {out / 'checkpoint-8'}: ")
    assert "resume from an earlier checkpoint-N or start a new --output_dir" in line or \
        "no model*.safetensors weights in this checkpoint" in line or \
        "lora_config differs from the checkpoint's" in line  # the resume policy refuses it before loading


def test_a_damaged_checkpoint_is_refused_and_an_earlier_one_resumes(work, tmp_path, capsys):
    """Written before checksums.json existed (removed here): a file that no longer loads is one line."""
    out = resumable_copy(work, tmp_path, "full")
    for record in out.glob("checkpoint-*/checksums.json"):
        record.unlink()
    optimizer = out / "checkpoint-8" / "optimizer.pt"
    os.truncate(optimizer, optimizer.stat().st_size // 2)
    assert train(work, tmp_path, "--resume_from_checkpoint", "auto", lora=False) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {out / 'checkpoint-8'}: cannot resume from this checkpoint (")
    assert train(work, tmp_path, "--resume_from_checkpoint", str(out / "checkpoint-6"), lora=False) == 0
    assert (out / "final" / "model.safetensors").is_file()


def resume_full(work, tmp_path, spec: str) -> int:
    """The reference full-FT run's command line (same weights), resumed from ``spec``."""
    config = sft_config(work, "rel_full", lora=False)
    return sft_in_process(sft_argv(work, config, tmp_path / "out", "--resume_from_checkpoint", spec))


def test_bit_rot_in_a_checkpoint_is_named_and_auto_resumes_from_the_newest_intact_one(work, tmp_path, capsys):
    """One flipped bit in the weights' data: the file still loads, only the recorded sha256 tells."""
    out = resumable_copy(work, tmp_path, "full")
    weights = out / "checkpoint-8" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-3] ^= 0x01
    weights.write_bytes(bytes(raw))
    before = snapshot(out)
    assert resume_full(work, tmp_path, str(out / "checkpoint-8")) == 2
    assert error_line(capsys) == (
        f"error: {out / 'checkpoint-8'}: model.safetensors does not match the sha256 recorded when it was "
        "written (the file changed on disk) — resume from an earlier checkpoint-N, or use "
        "--resume_from_checkpoint auto to take the newest intact one")
    assert snapshot(out) == before
    assert resume_full(work, tmp_path, "auto") == 0
    err = capsys.readouterr().err
    assert ("skipped damaged checkpoint-8 (model.safetensors does not match the sha256 recorded when it was "
            "written (the file changed on disk)) — resuming from checkpoint-6, the newest intact checkpoint") in err
    reference = final_weights(reference_run(work, "full"))
    resumed = final_weights(out)
    assert reference.keys() == resumed.keys() and all(torch.equal(reference[k], resumed[k]) for k in reference)


def test_checkpoints_written_before_checksums_still_resume_bit_identically(work, tmp_path):
    out = resumable_copy(work, tmp_path, "full")
    for ckpt in out.glob("checkpoint-*"):
        (ckpt / "checksums.json").unlink()
    shutil.rmtree(out / "checkpoint-8")  # so the resume trains steps 7 and 8
    assert resume_full(work, tmp_path, "auto") == 0
    reference = final_weights(reference_run(work, "full"))
    resumed = final_weights(out)
    assert reference.keys() == resumed.keys() and all(torch.equal(reference[k], resumed[k]) for k in reference)


@pytest.mark.parametrize("damage, message", [
    ("missing", "manifest.json: not found"),
    ("nested", "manifest.json: unreadable (nested too deeply)"),
    ("long number", "manifest.json: unreadable (Exceeds the limit"),
    ("not an object", "format_version None, expected 1"),
    ("shards not a list", "splits.train.shards is malformed"),
    ("shard outside the directory", "splits.train.shards is malformed"),
])
def test_a_damaged_manifest_is_one_line(work, tmp_path, damage, message):
    data = copy_data(work, tmp_path, "chat")
    path = data / "manifest.json"
    manifest = json.loads(path.read_text())
    if damage == "missing":
        path.unlink()
    elif damage == "nested":
        path.write_text("[" * 100_000 + "]" * 100_000)
    elif damage == "long number":
        path.write_text('{"format_version": ' + "1" * 5000 + "}")
    elif damage == "not an object":
        path.write_text("[1, 2]")
    else:
        manifest["splits"]["train"]["shards"] = "x" if damage == "shards not a list" else [
            {**manifest["splits"]["train"]["shards"][0], "file": "../instruct/train_00000.jsonl"}]
        write_json(path, manifest)
    with pytest.raises(UserError, match="re-run the prepare stage") as err:
        verify_data_dir(data)
    assert message in str(err.value) and "\n" not in str(err.value)
