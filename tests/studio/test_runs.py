"""Runs tab: discovery and state from the runs' own files, checkpoints and the exact resume command."""
from __future__ import annotations

import json
import shlex
import sys

from utils.studio.runs import describe, discover, lock_holder, read_run, resume_argv


def test_discovery_finds_each_run_with_its_state(studio_home, running_run):
    runs = {r.path.name: r for r in discover(studio_home / "checkpoints")}
    assert set(runs) == {"finished", "interrupted", "eval", running_run.name}
    assert runs["finished"].state == "finished" and runs["finished"].kind == "SFT"
    assert runs["interrupted"].state == "interrupted"
    assert runs[running_run.name].state == "running"
    assert "pid" in runs[running_run.name].holder
    assert runs["eval"].kind == "evaluation" and runs["eval"].state == "finished"
    assert runs["eval"].model_path.endswith("finished/final")
    assert discover(studio_home / "checkpoints")[0].state == "running", "running runs come first"


def test_state_follows_the_lock(studio_home, running_run):
    assert read_run(running_run).state == "running"
    assert lock_holder(studio_home / "checkpoints" / "sft" / "interrupted") is None
    assert not (studio_home / "checkpoints" / "sft" / ".interrupted.lock").exists(), "reading never creates a lock"


def test_finished_run_details(studio_home):
    run = read_run(studio_home / "checkpoints" / "sft" / "finished")
    assert run.step == 4
    assert [c.name for c in run.checkpoints] == ["checkpoint-2", "checkpoint-4"]
    assert [c.step for c in run.checkpoints] == [2, 4]
    assert [d.rsplit("/", 1)[-1] for d, _ in run.data_mix] == ["instruct", "chat"]
    assert [w for _, w in run.data_mix] == [0.7, 0.3]
    assert len(run.tokenizer_sha256) == 64
    assert run.config["training_params"]["max_steps"] == 4
    text = describe(run)
    assert "| `checkpoint-4` | 4 |" in text and "70.0%" in text


def test_resume_command_is_the_recorded_command_with_the_checkpoint(studio_home):
    run = read_run(studio_home / "checkpoints" / "sft" / "interrupted")
    recorded = json.loads((run.path / "command.json").read_text())
    command = shlex.split(run.resume_command("checkpoint-2"))
    assert command[0] == sys.executable
    assert command[-2:] == ["--resume_from_checkpoint", str(run.path / "checkpoint-2")]
    assert command[1:-2] == recorded["argv"]
    assert "--resume_from_checkpoint auto" in describe(run)


def test_resume_argv_drops_overwrite_and_an_earlier_resume_flag():
    argv = ["s.py", "--output_dir", "o", "--overwrite_output_dir", "--resume_from_checkpoint", "o/checkpoint-2",
            "--seed", "3"]
    assert resume_argv(argv, "auto") == ["s.py", "--output_dir", "o", "--seed", "3",
                                         "--resume_from_checkpoint", "auto"]


def test_deleted_or_foreign_folders_are_not_runs(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("x")
    assert discover(tmp_path) == []
    assert discover(tmp_path / "missing") == []
    assert read_run(tmp_path / "gone") is None
