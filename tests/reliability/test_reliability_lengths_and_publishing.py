"""Reliability III, through the real CLIs: lengths checked against the model, a LoRA resume on another base, no
window in which a kill loses an output, eval sets that are not UTF-8 or ask nothing, a corpus re-prepared under a
running trainer, and the smaller ones (a model path that is a file, a failed GGUF conversion's lock, the message of
a corpus whose every file is malformed). Each asserts the one-line message and that no user file changed."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from reliability_helpers import (FAULT_SCRIPT, ROOT, error_line, save_tiny_llama, script, sft_argv, sft_config,
                                 sft_in_process, snapshot, write_json)


def prepare_argv(work, config, out, *extra) -> list[str]:
    return ["--config", str(config), "--output_dir", str(out), "--tokenizer_path", str(work / "tokenizer"),
            "--num_proc", "1", *extra]


def prepare(work, config, out, *extra):
    return run_cli_script("02_prepare_sft_corpus", prepare_argv(work, config, out, *extra))


def run_cli_script(stem, argv):
    from utils.common.errors import run_cli

    return run_cli(script(stem).main, argv)


def with_fault(fault, stem, argv):
    return subprocess.run([sys.executable, str(FAULT_SCRIPT), fault, f"scripts/{stem}.py", *argv], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)


# --- 1. lengths against the model's positions ---------------------------------------------------------------
@pytest.fixture(scope="module")
def gpt2(work):
    """A GPT-2 with 32 positions (absolute: a position past them is an IndexError)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from utils.data.tokenizer import load_tokenizer

    tok = load_tokenizer(work / "tokenizer")
    path = work / "gpt2_32"
    if not path.exists():
        GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=2, n_head=4, n_positions=32,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)).save_pretrained(path)
    return path


def test_data_longer_than_gpt2_positions_is_refused_before_anything_is_written(work, gpt2, tmp_path, capsys):
    out = tmp_path / "sft"
    argv = sft_argv(work, sft_config(work, "gpt2_full", lora=False, max_steps=2), out, model=gpt2, data=("chat",),
                    weights=())
    assert sft_in_process(argv) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: --model_path {gpt2}: the model takes at most 32 positions (n_positions), but the "
                           f"longest example of {work / 'data' / 'chat'} (prepared with output_params.sequence_length "
                           "128) needs ")
    assert line.endswith("prepare the corpus again with output_params.sequence_length within the limit, or use a model "
                         "with more positions")
    assert not out.exists() and not list(tmp_path.glob(".sft*"))

    eval_set = tmp_path / "long.jsonl"
    eval_set.write_text(json.dumps({"prompt": "word " * 40, "reference": "x", "task": "t"}) + "\n")
    report = tmp_path / "eval"
    code = run_cli_script("04_evaluate_sft", ["--model_path", str(gpt2), "--tokenizer_path", str(work / "tokenizer"),
                                              "--eval_set", str(eval_set), "--output_dir", str(report), "--no_progress"])
    assert code == 2
    line = error_line(capsys)
    assert f"error: {gpt2}: the model takes at most 32 positions (n_positions), but the longest --eval_set prompt (" \
        in line and "lower --max_new_tokens or shorten those prompts" in line
    assert not report.exists()


def test_pretraining_windows_past_the_positions_are_refused_before_the_output_is_claimed(work, gpt2, tmp_path, capsys):
    text = tmp_path / "text.txt"
    text.write_text("Some words to continue training on. " * 100)
    config = write_json(tmp_path / "cpt.json", {
        "name": "cpt", "data": {"sources": [{"type": "text_files", "paths": [str(text)]}], "sequence_length": 64},
        "training_params": {"max_steps": 1, "per_device_train_batch_size": 1, "bf16": False}})
    out = tmp_path / "cpt"
    assert run_cli_script("01_pretrain", ["--config", str(config), "--tokenizer_path", str(work / "tokenizer"),
                                          "--model_path", str(gpt2), "--output_dir", str(out)]) == 2
    assert error_line(capsys) == (f"error: --model_path {gpt2}: the model takes at most 32 positions (n_positions), but "
                                  "data.sequence_length needs 64; lower data.sequence_length (and prepare "
                                  "data.supervised corpora with a smaller output_params.sequence_length), or use a "
                                  "model with more positions")
    assert not out.exists()


# --- 2. a LoRA resume onto another base -------------------------------------------------------------------------
def test_a_lora_resume_onto_another_base_of_the_same_shape_is_refused(work, tmp_path, capsys):
    other = save_tiny_llama(work / "tokenizer", tmp_path / "other_model", seed=5)  # same shape, other weights
    config = sft_config(work, "rel_base_swap", lora=True, max_steps=4, save_steps=2)
    out = tmp_path / "run"
    assert sft_in_process(sft_argv(work, config, out, "--max_steps", "2")) == 0
    before = snapshot(out, skip=(".cache",))
    assert sft_in_process(sft_argv(work, config, out, "--resume_from_checkpoint", "auto", model=other)) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {out / 'checkpoint-2'}: the checkpoint's adapter was trained on another base "
                           "model (weights sha256 ")
    assert line.endswith(f"resume with the base it was trained on ({work / 'model'}), or start a new --output_dir")
    assert {k: v for k, v in snapshot(out, skip=(".cache",)).items() if k != "command.json"} == \
        {k: v for k, v in before.items() if k != "command.json"}
    assert sft_in_process(sft_argv(work, config, out, "--resume_from_checkpoint", "auto")) == 0  # its own base


# --- 3. no window in which a kill loses an output ---------------------------------------------------------------
@pytest.mark.e2e
def test_a_prepare_killed_while_writing_leaves_a_temp_dir_the_next_run_sweeps(work, tmp_path):
    out = tmp_path / "corpus"
    config = work / "ds_instruct.json"
    assert prepare(work, config, out) == 0
    before = snapshot(out, skip=(".cache",))
    proc = with_fault("kill@publish-write:0", "02_prepare_sft_corpus", prepare_argv(work, config, out, "--force"))
    assert proc.returncode == -signal.SIGKILL
    leftovers = list(tmp_path.glob(".corpus.tmp-*"))
    assert len(leftovers) == 1 and snapshot(out, skip=(".cache",)) == before  # the published corpus untouched
    proc = subprocess.run([sys.executable, "scripts/02_prepare_sft_corpus.py",
                           *prepare_argv(work, config, out, "--force")], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{out}: removed {leftovers[0].name}, left by a run killed while writing it" in proc.stdout
    assert not list(tmp_path.glob(".corpus.*")) and snapshot(out, skip=(".cache",)).keys() == before.keys()


@pytest.mark.e2e
def test_a_kill_between_the_two_renames_loses_nothing_the_next_reader_restores_it(work, tmp_path, capsys):
    """Where names cannot be swapped in one step the previous corpus is renamed away first; killed right then,
    the trainer that reads it next puts it back (one line) and trains, instead of saying it was never prepared."""
    out = tmp_path / "instruct"
    config = work / "ds_instruct.json"
    assert prepare(work, config, out) == 0
    before = snapshot(out, skip=(".cache",))
    proc = with_fault("kill@publish-rename:0", "02_prepare_sft_corpus", prepare_argv(work, config, out, "--force"))
    assert proc.returncode == -signal.SIGKILL
    assert not out.exists() and len(list(tmp_path.glob(".instruct.old-*"))) == 1
    capsys.readouterr()
    argv = sft_argv(work, sft_config(work, "rel_restore", lora=True, max_steps=1), tmp_path / "run",
                    data=("instruct",), weights=())
    argv[argv.index("--data_dirs") + 1] = str(out)
    assert sft_in_process(argv) == 0
    assert f"{out}: restored from .instruct.old-" in capsys.readouterr().out
    assert snapshot(out, skip=(".cache",)) == before and not list(tmp_path.glob(".instruct.*"))


def test_the_swap_publishes_in_one_step_where_the_os_can(tmp_path):
    from utils.common import publish

    final, tmp = tmp_path / "out", tmp_path / ".out.tmp-1"
    final.mkdir()
    (final / "v").write_text("old")
    tmp.mkdir()
    (tmp / "v").write_text("new")
    swaps = []
    real = publish._exchange
    publish._exchange = lambda a, b: swaps.append((a, b)) or real(a, b)
    try:
        publish.publish_dir(tmp, final)
    finally:
        publish._exchange = real
    assert swaps == [(tmp, final)]
    assert (final / "v").read_text() == "new" and not tmp.exists() and sorted(os.listdir(tmp_path)) == ["out"]


# --- 4. eval sets that are not UTF-8, or ask nothing --------------------------------------------------------------
def test_eval_sets_not_utf8_are_one_line_and_empty_prompts_are_skipped_and_counted(work, tmp_path, capsys):
    final = work / "model"
    good = json.dumps({"prompt": "What is 2 plus 3?", "reference": "5", "task": "sums"}).encode()
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(good + b"\n" + good + b"\n" + b'{"prompt": "caf\xe9", "reference": "x"}\n')
    for flag in ("--eval_set", "--rephrased_set"):
        extra = ["--eval_set", str(bad)] if flag == "--eval_set" else ["--eval_set", str(_rows(tmp_path)), flag, str(bad)]
        out = tmp_path / f"eval{flag}"
        code = run_cli_script("04_evaluate_sft", ["--model_path", str(final), "--tokenizer_path",
                                                  str(work / "tokenizer"), "--output_dir", str(out), "--no_progress",
                                                  *extra])
        assert code == 2
        assert error_line(capsys).startswith(f"error: {bad}:3: not UTF-8 text (invalid continuation byte")
        assert not out.exists()
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n".join(json.dumps(r) for r in ({"prompt": "", "reference": "x", "task": "t"},
                                                       {"prompt": "What is 2 plus 3?", "reference": "5", "task": "t"},
                                                       {"prompt": "   ", "reference": "y", "task": "t"})) + "\n")
    out = tmp_path / "eval_empty"
    assert run_cli_script("04_evaluate_sft", ["--model_path", str(final), "--tokenizer_path", str(work / "tokenizer"),
                                              "--eval_set", str(empty), "--output_dir", str(out), "--no_progress"]) == 0
    assert f"{empty}: skipped 2 row(s) with an empty prompt (nothing to answer)" in capsys.readouterr().out
    report = json.loads((out / "eval_report.json").read_text())
    assert report["tuned"]["eval_examples"] == 1


def _rows(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text(json.dumps({"prompt": "What is 2 plus 3?", "reference": "5", "task": "sums"}) + "\n")
    return path


# --- 5. a corpus re-prepared under a running trainer -------------------------------------------------------------
@pytest.mark.e2e
def test_preparing_a_corpus_a_live_run_reads_is_refused_naming_the_run(work, tmp_path, capsys):
    corpus = tmp_path / "instruct"
    config = work / "ds_instruct.json"
    assert prepare(work, config, corpus) == 0
    before = snapshot(corpus, skip=(".cache",))
    argv = sft_argv(work, sft_config(work, "rel_reader", lora=True, max_steps=10_000, save_steps=0, eval_steps=0),
                    tmp_path / "run", data=("instruct",), weights=())
    argv[argv.index("--data_dirs") + 1] = str(corpus)
    trainer = subprocess.Popen([sys.executable, "scripts/03_sft_industrial.py", *argv], cwd=ROOT,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        for line in trainer.stdout:  # the plan is printed once the data is read (and locked)
            if line.startswith("resolved plan"):
                break
        assert prepare(work, config, corpus, "--force") == 2
        line = error_line(capsys)
        assert line.startswith(f"error: --output_dir {corpus}: in use by pid {trainer.pid} (")
        assert "03_sft_industrial.py" in line and line.endswith("wait for it to finish or choose another --output_dir")
        assert snapshot(corpus, skip=(".cache",)) == before
    finally:
        trainer.send_signal(signal.SIGTERM)
        trainer.wait(timeout=120)
    assert prepare(work, config, corpus, "--force") == 0  # the run is over: the corpus can be replaced
    assert not list(tmp_path.glob(".instruct.lock"))


# --- 6. the smaller ones -----------------------------------------------------------------------------------------
def test_a_model_path_that_is_a_file_is_named_as_such(work, tmp_path, capsys):
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a directory")
    out = tmp_path / "run"
    config = sft_config(work, "rel_file_model", lora=True, max_steps=1)
    assert sft_in_process(sft_argv(work, config, out, model=weights)) == 2
    expected = (f"error: {weights}: is a file, not a model directory or a .gguf file; pass the directory that holds "
                "config.json and the weights (e.g. the final/ of a run)")
    assert error_line(capsys) == expected and not out.exists()
    assert run_cli_script("04_evaluate_sft", ["--model_path", str(weights), "--output_dir", str(tmp_path / "e")]) == 2
    assert error_line(capsys) == expected


def test_a_failed_gguf_conversion_leaves_no_lock_beside_the_users_file(tmp_path):
    from utils.common.errors import UserError
    from utils.model.gguf import hf_dir_for_gguf

    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    with pytest.raises(UserError):
        hf_dir_for_gguf(broken)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.gguf"]


def test_a_lock_that_cannot_be_written_names_the_parent(tmp_path, monkeypatch):
    from utils.common import locks
    from utils.common.errors import UserError

    def read_only(path, *args):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(locks.os, "open", read_only)
    monkeypatch.setattr(locks.os, "access", lambda path, mode: False)
    out = tmp_path / "out"
    with pytest.raises(UserError) as err:
        with locks.exclusive(out):
            pass
    assert str(err.value) == (f"--output_dir {out}: its lock file goes beside it, in {tmp_path}, which is not writable "
                              f"(Permission denied); make {tmp_path} writable or choose a --output_dir in a writable "
                              "directory")


def test_a_corpus_whose_every_file_is_malformed_says_to_fix_the_files(work, tmp_path, capsys):
    chats = tmp_path / "chats"
    chats.mkdir()
    (chats / "a.md").write_text("**User**: Show a loop\n**GPT**: Here:\n```python\nfor i in range(3):\n")
    config = write_json(tmp_path / "md.json", {
        "name": "md", "template": "chatml", "output_params": {"sequence_length": 128, "train_ratio": 1},
        "datasets": [{"name": "md", "type": "markdown_transcripts", "directories": [str(chats)],
                      "participants": {"user": ["**User**:"], "assistant": ["**GPT**:"]}}]})
    assert prepare(work, config, tmp_path / "out") == 2
    assert error_line(capsys) == (f"error: {config}: no training example left: every row was malformed "
                                  "(unclosed_code_fence 1); fix the files and rows named above (quality_filters do "
                                  "not apply to them)")
    assert not (tmp_path / "out").exists()
