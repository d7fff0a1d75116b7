"""Reliability: no stage destroys a user's work. Each stage marks the directory it writes and refuses one
that another stage (or no stage) wrote, even with --force; evaluation and export never write over or inside
their input model; one process at a time holds an output directory; a new training run never mixes with an
earlier run's checkpoints. Every refusal is one line and leaves every existing file byte-for-byte unchanged."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from reliability_helpers import (ROOT, error_line, final_weights, newest_state, reference_run, script, sft_argv,
                                 sft_config, sft_in_process, snapshot)
from utils.common.errors import run_cli
from utils.common.locks import exclusive
from utils.common.publish import OWNER_FILE


def prepare(work: Path, out: Path, *extra: str) -> int:
    return run_cli(script("02_prepare_sft_corpus").main, [
        "--config", str(work / "ds_instruct.json"), "--output_dir", str(out),
        "--tokenizer_path", str(work / "tokenizer"), "--num_proc", "1", *extra])


def trained_run(work: Path, tmp_path: Path) -> Path:
    """A copy of the reference LoRA run (checkpoints, metrics, final/), free to be damaged."""
    out = tmp_path / "run"
    shutil.copytree(reference_run(work, "lora"), out)
    return out


def test_prepare_force_never_replaces_a_folder_it_did_not_write(work, tmp_path, capsys):
    raw = tmp_path / "raw"
    shutil.copytree(work / "raw", raw)
    before = snapshot(raw)
    assert prepare(work, raw, "--force") == 2
    line = error_line(capsys)
    assert f"--output_dir {raw}: holds 2 entries this pipeline did not write (chat.jsonl, instruct.jsonl)" in line
    assert "choose another --output_dir" in line
    assert snapshot(raw) == before


def test_prepare_force_replaces_its_own_corpus_but_never_a_training_run(work, tmp_path, capsys):
    out = tmp_path / "corpus"
    assert prepare(work, out) == 0
    assert json.loads((out / OWNER_FILE).read_text()) == {"stage": "prepare"}
    assert prepare(work, out) == 2
    assert "already exists; pass --force to replace it" in error_line(capsys)
    assert prepare(work, out, "--force") == 0
    run = trained_run(work, tmp_path)
    before = snapshot(run)
    assert prepare(work, run, "--force") == 2
    assert "holds an SFT run (03_sft_industrial.py), not a prepared corpus" in error_line(capsys)
    assert snapshot(run) == before


@pytest.mark.parametrize("where", ["run", "final", "inside_final"])
def test_evaluation_never_writes_over_or_inside_its_model_or_a_run(work, tmp_path, capsys, where):
    run = trained_run(work, tmp_path)
    before = snapshot(run)
    out = {"run": run, "final": run / "final", "inside_final": run / "final" / "eval"}[where]
    code = run_cli(script("04_evaluate_sft").main, ["--model_path", str(run / "final"), "--output_dir", str(out)])
    assert code == 2
    line = error_line(capsys)
    expected = {"run": "holds an SFT run (03_sft_industrial.py), not an evaluation report",
                "final": "is inside --model_path", "inside_final": "is inside --model_path"}[where]
    assert expected in line and "nothing was changed" in line
    assert snapshot(run) == before


def test_export_never_writes_over_a_run_or_inside_its_model(work, tmp_path, capsys):
    run = trained_run(work, tmp_path)
    before = snapshot(run)
    export = script("05_export_model").main
    assert run_cli(export, ["--model_path", str(run / "final"), "--output_dir", str(run / "final" / "x")]) == 2
    assert "is inside --model_path" in error_line(capsys)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    other_before = snapshot(other)
    assert run_cli(export, ["--model_path", str(run / "final"), "--output_dir", str(other)]) == 2
    assert "holds an SFT run (03_sft_industrial.py), not an exported model" in error_line(capsys)
    assert snapshot(run) == before and snapshot(other) == other_before


def test_training_refuses_another_stages_directory_and_a_file(work, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(work / "data" / "chat", corpus)
    before = snapshot(corpus)
    config = sft_config(work, "rel_lora")
    assert sft_in_process(sft_argv(work, config, corpus)) == 2
    assert "holds a prepared corpus (02_prepare_sft_corpus.py), not an SFT run" in error_line(capsys)
    assert snapshot(corpus) == before
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    assert sft_in_process(sft_argv(work, config, a_file)) == 2
    assert "is a file, not a directory" in error_line(capsys)
    assert a_file.read_text() == "mine\n"


def test_a_new_run_over_another_runs_checkpoints_is_refused_unless_resumed_or_overwritten(work, tmp_path, capsys):
    run = trained_run(work, tmp_path)
    before = snapshot(run)
    config = sft_config(work, "rel_lora")
    assert sft_in_process(sft_argv(work, config, run)) == 2
    line = error_line(capsys)
    assert "holds checkpoints of an earlier run (checkpoint-6, checkpoint-8)" in line
    assert "--resume_from_checkpoint auto" in line and "--overwrite_output_dir" in line
    assert snapshot(run) == before
    # resuming the finished run says where it starts
    assert sft_in_process(sft_argv(work, config, run, "--resume_from_checkpoint", "auto")) == 0
    assert "resuming from checkpoint-8 (step 8 of 8)" in capsys.readouterr().out
    # --overwrite_output_dir deletes the earlier run; what is left is exactly a fresh run
    assert sft_in_process(sft_argv(work, config, run, "--overwrite_output_dir")) == 0
    fresh = tmp_path / "fresh"
    assert sft_in_process(sft_argv(work, config, fresh)) == 0
    wa, wb = final_weights(run), final_weights(fresh)
    assert all(a.equal(wb[k]) for k, a in wa.items())
    assert newest_state(run)["loss_history"] == newest_state(fresh)["loss_history"]
    assert (run / "metrics.jsonl").read_text().count('"step": 1,') == 1


def test_a_second_process_on_the_same_output_dir_is_refused_naming_the_holder(work, tmp_path, capsys):
    out = tmp_path / "corpus"
    assert prepare(work, out) == 0
    before = snapshot(out)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, '.'); "
         "from utils.common.locks import exclusive\n"
         f"with exclusive({str(out)!r}):\n    print('held', flush=True); time.sleep(120)"],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert prepare(work, out, "--force") == 2
        line = error_line(capsys)
        assert f"--output_dir {out}: in use by pid {holder.pid} (-c)" in line
        assert snapshot(out) == before
        config = sft_config(work, "rel_lora")
        run = tmp_path / "run"
        with exclusive(run):  # the trainer, evaluation and export take the same lock
            assert sft_in_process(sft_argv(work, config, run)) == 2
            assert f"in use by pid {os.getpid()}" in error_line(capsys)
        assert not run.exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # the OS released the killed holder's lock: the next run goes ahead
    assert prepare(work, out, "--force") == 0


def test_pretraining_refuses_another_stages_directory(work, tmp_path, capsys):
    run = tmp_path / "corpus"
    shutil.copytree(work / "data" / "chat", run)
    before = snapshot(run)
    code = run_cli(script("01_pretrain").main, ["--config", str(ROOT / "config/pretrain/tiny.json"),
                                                "--tokenizer_path", str(work / "tokenizer"), "--output_dir", str(run)])
    assert code == 2
    assert "holds a prepared corpus (02_prepare_sft_corpus.py), not a pre-training run (01_pretrain.py)" in \
        error_line(capsys)
    assert snapshot(run) == before
