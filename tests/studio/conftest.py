"""A studio home made by the real stages in seconds: two prepared corpora, a finished LoRA SFT run with its
evaluation, a running run (its output lock held by a child process) and an interrupted one."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from reliability_helpers import ROOT, script, sft_argv, sft_config, sft_in_process, sft_work
from utils.common.errors import run_cli

_HOME: dict[str, Path] = {}


def build_home(base: Path, work: Path) -> Path:
    """<base>/checkpoints/sft/{finished,interrupted}, finished/eval, data/sft_processed/{instruct,chat}."""
    home = base / "home"
    data = home / "data" / "sft_processed"
    data.mkdir(parents=True)
    for name in ("instruct", "chat"):
        shutil.copytree(work / "data" / name, data / name)
    finished = home / "checkpoints" / "sft" / "finished"
    config = sft_config(work, "studio_lora", max_steps=4, save_steps=2, eval_steps=2)
    argv = sft_argv(work, config, finished, data=("instruct", "chat"))
    argv[argv.index("--data_dirs") + 1:argv.index("--data_dirs") + 3] = [str(data / "instruct"), str(data / "chat")]
    assert sft_in_process(argv) == 0
    eval_set = work / "eval_set.jsonl"
    eval_set.write_text("".join(json.dumps({"prompt": f"What is {a} plus 1?", "reference": f"The answer is {a + 1}.",
                                            "task": "sum"}) + "\n" for a in range(3)))
    code = run_cli(script("04_evaluate_sft").main, [
        "--model_path", str(finished / "final"), "--base_model_path", str(work / "model"),
        "--data_dirs", str(data / "instruct"), "--eval_set", str(eval_set), "--max_new_tokens", "4",
        "--output_dir", str(finished / "eval"), "--no_progress"])
    assert code == 0
    interrupted = finished.parent / "interrupted"
    shutil.copytree(finished, interrupted, ignore=shutil.ignore_patterns("final", "eval"))
    return home


@pytest.fixture(scope="session")
def studio_home(tmp_path_factory, toy_tokenizer_dir) -> Path:
    if "home" not in _HOME:
        work = sft_work(tmp_path_factory, toy_tokenizer_dir)
        _HOME["home"] = build_home(tmp_path_factory.mktemp("studio"), work)
    return _HOME["home"]


def hold_lock(run_dir: Path) -> subprocess.Popen:
    """A child process that holds ``run_dir``'s output lock (as a training stage does) until killed."""
    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from utils.common.locks import exclusive\n"
            "with exclusive(sys.argv[2]):\n    print('locked', flush=True); time.sleep(600)")
    child = subprocess.Popen([sys.executable, "-c", code, str(ROOT), str(run_dir)], stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout.readline().strip() == "locked"
    return child


@pytest.fixture
def lock_holder():
    """``hold_lock`` for tests in other modules."""
    return hold_lock


@pytest.fixture
def running_run(studio_home, tmp_path):
    """A copy of the interrupted run whose lock a live process holds, removed afterwards."""
    run = studio_home / "checkpoints" / "sft" / f"running_{tmp_path.name[-8:]}"
    shutil.copytree(studio_home / "checkpoints" / "sft" / "interrupted", run)
    child = hold_lock(run)
    yield run
    child.kill()
    child.wait()
    time.sleep(0.05)
    shutil.rmtree(run, ignore_errors=True)
