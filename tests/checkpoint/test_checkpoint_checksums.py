"""Checkpoint checksums: checksums.json records each file's sha256 when written; resume verifies it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.checkpoint.checkpoints import (CHECKSUMS, COMPLETE, _record_checksums, resolve_resume,
                                          verify_checkpoint)
from utils.common.errors import UserError


def fake_checkpoint(out: Path, step: int, hashed: bool = True) -> Path:
    ckpt = out / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "model.safetensors").write_bytes(bytes(range(256)) * 4)
    (ckpt / "optimizer.pt").write_bytes(b"optimizer state")
    (ckpt / "training_state.json").write_text(json.dumps({"step": step}))
    if hashed:
        _record_checksums(ckpt)
    (ckpt / COMPLETE).write_text("ok\n")
    return ckpt


def flip(path: Path, at: int = 100) -> None:
    raw = bytearray(path.read_bytes())
    raw[at] ^= 0x01
    path.write_bytes(bytes(raw))


def test_every_file_but_complete_is_recorded(tmp_path):
    ckpt = fake_checkpoint(tmp_path, 2)
    sums = json.loads((ckpt / CHECKSUMS).read_text())["sha256"]
    assert sorted(sums) == ["model.safetensors", "optimizer.pt", "training_state.json"]
    assert verify_checkpoint(ckpt) is None


def test_a_changed_missing_or_unreadable_record_names_the_file(tmp_path):
    ckpt = fake_checkpoint(tmp_path, 2)
    flip(ckpt / "model.safetensors")
    assert verify_checkpoint(ckpt) == ("model.safetensors does not match the sha256 recorded when it was written "
                                       "(the file changed on disk)")
    ckpt = fake_checkpoint(tmp_path, 4)
    (ckpt / "optimizer.pt").unlink()
    assert verify_checkpoint(ckpt) == "optimizer.pt is missing"
    ckpt = fake_checkpoint(tmp_path, 6)
    (ckpt / CHECKSUMS).write_text("[" * 100_000)
    assert verify_checkpoint(ckpt).startswith(f"{CHECKSUMS} is unreadable (")
    ckpt = fake_checkpoint(tmp_path, 8)
    (ckpt / CHECKSUMS).write_text(json.dumps({"sha256": {"../escape": "0" * 64}}))
    assert verify_checkpoint(ckpt) == f"{CHECKSUMS} names a file outside the checkpoint (../escape)"


def test_a_checkpoint_written_before_checksums_is_taken_as_intact(tmp_path):
    ckpt = fake_checkpoint(tmp_path, 2, hashed=False)
    assert verify_checkpoint(ckpt) is None
    assert resolve_resume("auto", tmp_path) == ckpt
    assert resolve_resume(str(ckpt), tmp_path) == ckpt


def test_auto_falls_back_to_the_newest_intact_checkpoint_and_says_so(tmp_path, capsys):
    fake_checkpoint(tmp_path, 2)
    good = fake_checkpoint(tmp_path, 4)
    bad = fake_checkpoint(tmp_path, 6)
    flip(bad / "optimizer.pt", 3)
    assert resolve_resume("auto", tmp_path) == good
    err = capsys.readouterr().err
    assert err == ("skipped damaged checkpoint-6 (optimizer.pt does not match the sha256 recorded when it was "
                   "written (the file changed on disk)) — resuming from checkpoint-4, the newest intact checkpoint\n")
    assert resolve_resume("auto", tmp_path, announce=False) == good
    assert capsys.readouterr().err == ""


def test_an_explicit_damaged_checkpoint_is_refused_naming_the_file(tmp_path):
    bad = fake_checkpoint(tmp_path, 6)
    flip(bad / "model.safetensors")
    with pytest.raises(UserError) as err:
        resolve_resume(str(bad), tmp_path)
    assert str(err.value).startswith(f"{bad}: model.safetensors does not match the sha256 recorded")
    assert "--resume_from_checkpoint auto" in str(err.value) and "\n" not in str(err.value)


def test_auto_with_every_checkpoint_damaged_is_one_line(tmp_path):
    for step in (2, 4):
        flip(fake_checkpoint(tmp_path, step) / "model.safetensors")
    with pytest.raises(UserError, match="no intact checkpoint to resume: checkpoint-4 .*; checkpoint-2 "):
        resolve_resume("auto", tmp_path)
