"""Reliability: a write error while saving (full disk, read-only target) and NaN/inf end in one clear line,
keep the last good checkpoint, and a resume afterwards ends exactly like an uninterrupted run."""
from __future__ import annotations

import errno
import json
import math

import pytest
import torch

import fault_inject
from reliability_helpers import (assert_checkpoints_whole, assert_same_run, error_line, metrics, newest_state,
                                 reference_run, script, sft_argv, sft_config, sft_in_process, sft_with_fault)
from utils.checkpoint.checkpoints import list_checkpoints, resolve_resume
from utils.common.errors import run_cli

FULL_DISK = OSError(errno.ENOSPC, "No space left on device")
TORCH_FULL_DISK = RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
"""What torch.save raises when the disk fills under it (seen with RLIMIT_FSIZE), not an OSError."""


def safetensors_full_disk():
    from safetensors import SafetensorError

    return SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")


def fail_when_writing_into(target: str, error, original):
    """``original`` (a save function), raising ``error`` when the destination is inside ``target``."""
    def save(*args, **kwargs):
        destination = str(args[1] if len(args) > 1 else kwargs.get("save_directory", kwargs.get("f", "")))
        if target in destination:
            raise error
        return original(*args, **kwargs)
    return save


def check_failed_save(work, out, capsys, step: int) -> None:
    line = error_line(capsys)
    assert f"checkpoint-{step}: checkpoint write failed" in line
    assert f"the previous checkpoint {out / f'checkpoint-{step - 2}'} is intact" in line
    assert [p.name for p in assert_checkpoints_whole(out)][-1] == f"checkpoint-{step - 2}"
    assert not (out / f"checkpoint-{step}").exists() and not list(out.glob(".checkpoint-*"))
    assert resolve_resume("auto", out) == out / f"checkpoint-{step - 2}"


@pytest.mark.parametrize("how", ["torch.save ENOSPC", "torch.save zip writer", "safetensors I/O error"])
def test_disk_full_while_saving_a_checkpoint(work, monkeypatch, capsys, how):
    out = work / "out" / f"full_disk_{how.split()[0]}_{how.split()[-1]}"
    argv = sft_argv(work, sft_config(work, "rel_full", lora=False), out, "--resume_from_checkpoint", "auto")
    if how.startswith("torch.save"):
        error = FULL_DISK if "ENOSPC" in how else TORCH_FULL_DISK
        monkeypatch.setattr(torch, "save", fail_when_writing_into(".checkpoint-4.tmp", error, torch.save))
    else:
        from transformers import PreTrainedModel

        original = PreTrainedModel.save_pretrained
        monkeypatch.setattr(PreTrainedModel, "save_pretrained",
                            fail_when_writing_into(".checkpoint-4.tmp", safetensors_full_disk(), original))
    assert sft_in_process(argv) == 2
    check_failed_save(work, out, capsys, step=4)
    if how == "torch.save ENOSPC":  # space freed: the resumed run ends as if nothing happened
        monkeypatch.undo()
        assert sft_in_process(argv) == 0
        assert_same_run(reference_run(work, "full"), out)


@pytest.mark.e2e
def test_real_file_size_limit_while_saving_then_resume(work):
    """A real failed write: after checkpoint-2 the process may not grow a file past 64 KiB (RLIMIT_FSIZE,
    EFBIG like a full disk), so safetensors fails inside checkpoint-4: one line, exit 2, nothing lost."""
    out = work / "out" / "fsize"
    argv = sft_argv(work, sft_config(work, "rel_full", lora=False), out, "--resume_from_checkpoint", "auto")
    proc = sft_with_fault("fsize@after-ckpt:2", argv)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-2000:]
    assert "checkpoint-4: checkpoint write failed" in errors[0] and "File too large" in errors[0]
    assert [p.name for p in assert_checkpoints_whole(out)] == ["checkpoint-2"]
    assert not list(out.glob(".checkpoint-*"))
    assert sft_in_process(argv) == 0
    assert_same_run(reference_run(work, "full"), out)


def test_write_error_in_final_keeps_every_checkpoint_and_a_rerun_finishes(work, monkeypatch, capsys):
    out = work / "out" / "final_fails"
    argv = sft_argv(work, sft_config(work, "rel_lora"), out, "--resume_from_checkpoint", "auto")
    from peft import PeftModel

    original = PeftModel.save_pretrained
    monkeypatch.setattr(PeftModel, "save_pretrained",
                        fail_when_writing_into(".final.tmp", safetensors_full_disk(), original))
    assert sft_in_process(argv) == 2
    line = error_line(capsys)
    assert f"{out / 'final'}: write failed (Error while serializing: I/O error" in line
    assert "nothing was replaced" in line and not (out / "final").exists() and not list(out.glob(".final*"))
    assert newest_state(out)["step"] == 8
    monkeypatch.undo()
    assert sft_in_process(argv) == 0  # resumes from checkpoint-8: only final/ is written
    assert_same_run(reference_run(work, "lora"), out)


def test_prepare_disk_full_leaves_no_output(work, tmp_path, monkeypatch, capsys):
    from utils.data.shards import ShardWriter

    def full(self, *args):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.out_dir / "train_00000.jsonl"))

    monkeypatch.setattr(ShardWriter, "add", full)
    out = tmp_path / "prepared"
    code = run_cli(script("02_prepare_sft_corpus").main, [
        "--config", str(work / "ds_chat.json"), "--output_dir", str(out), "--tokenizer_path",
        str(work / "tokenizer"), "--num_proc", "1"])
    assert code == 2
    assert error_line(capsys) == f"error: {out}: write failed (No space left on device); nothing was " \
                                     "replaced — free disk space or fix permissions and run again"
    assert not out.exists() and not list(tmp_path.glob(".prepared*"))


def test_environment_os_errors_anywhere_are_one_line(capsys):
    def disk_full(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "out/metrics.jsonl")

    assert run_cli(disk_full, []) == 2
    assert error_line(capsys).startswith("error: out/metrics.jsonl: No space left on device; free disk space")

    def bug(argv):
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError):  # not the machine's fault: the traceback stays
        run_cli(bug, [])


def lr_spike_at(step: int, monkeypatch) -> None:
    """The update of ``step`` runs with learning rate 1e30: the next loss is inf/NaN."""
    import utils.train.loop as train_loop

    original = train_loop.optimizer_step

    def optimizer_step(run):
        if run.scheduler.last_epoch + 1 == step:
            for group in run.optimizer.param_groups:
                group["lr"] = 1e30
        return original(run)

    monkeypatch.setattr(train_loop, "optimizer_step", optimizer_step)


def all_finite(checkpoint) -> bool:
    from safetensors.torch import load_file

    return all(torch.isfinite(t).all() for f in checkpoint.glob("*.safetensors") for t in load_file(f).values())


def test_huge_learning_rate_stops_before_a_bad_checkpoint(work, monkeypatch, capsys):
    """lr 1e30 for the update of step 5: step 6 still has a finite loss (RMSNorm flattens the huge
    weights) but its update makes them NaN; the run stops there, checkpoint-4 stays the newest."""
    out = work / "out" / "lr_spike"
    argv = sft_argv(work, sft_config(work, "rel_full", lora=False), out, "--resume_from_checkpoint", "auto")
    lr_spike_at(5, monkeypatch)
    assert sft_in_process(argv) == 2
    line = error_line(capsys)
    assert "at step 6: training stopped" in line and f"the last good checkpoint in {out} is kept" in line
    assert [p.name for p in list_checkpoints(out)][-1] == "checkpoint-4" and all_finite(out / "checkpoint-4")
    assert all(math.isfinite(r["loss"]) for r in metrics(out) if "loss" in r)
    monkeypatch.undo()
    assert sft_in_process(argv) == 0
    assert_same_run(reference_run(work, "full"), out)


def test_nan_loss_stops_with_a_message_and_keeps_the_last_good_checkpoint(work, monkeypatch, capsys):
    import utils.train.loop as train_loop

    original = train_loop.train_step

    def train_step(run, plan, packed=None):  # as fp16 overflow would: the loss of step 5 comes out NaN
        loss = original(run, plan, packed)
        return loss * float("nan") if run.scheduler.last_epoch + 1 == 5 else loss

    monkeypatch.setattr(train_loop, "train_step", train_step)
    out = work / "out" / "nan_loss"
    assert sft_in_process(sft_argv(work, sft_config(work, "rel_lora"), out)) == 2
    assert error_line(capsys) == (
        f"error: loss is nan at step 5: training stopped; the last good checkpoint in {out} is kept. "
        "Lower learning_rate, keep max_grad_norm > 0, or use bf16 instead of fp16")
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2", "checkpoint-4"]
    assert [r["step"] for r in metrics(out) if "loss" in r] == [1, 2, 3, 4]


def test_nan_weights_behind_a_finite_loss_are_never_checkpointed(work, monkeypatch, capsys):
    """A step's loss is measured before its update: NaN weights after the update of step 4 must stop the
    run before checkpoint-4 is written, not be saved as the 'last good' checkpoint."""
    out = work / "out" / "nan_weights"
    argv = sft_argv(work, sft_config(work, "rel_lora"), out)
    fault_inject.install("nan@update:4", monkeypatch.setattr)
    assert sft_in_process(argv) == 2
    assert "weights became NaN or inf at step 4: training stopped before writing a checkpoint" \
        in error_line(capsys)
    assert [p.name for p in list_checkpoints(out)] == ["checkpoint-2"] and all_finite(out / "checkpoint-2")
    state = json.loads((out / "checkpoint-2" / "training_state.json").read_text())
    assert all(math.isfinite(x) for x in state["loss_history"])
