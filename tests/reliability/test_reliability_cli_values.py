"""Reliability: every command-line value is checked like a config value.

A bad --max_steps, --seed, --data_weights, count flag or --output_dir (a file, or below a file) ends in exactly
one ``error:`` line naming the flag, exit 2, no traceback, and no file written or changed. The checks run at
argument parsing, before any input is read, so the other paths in these command lines need not exist.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from reliability_helpers import ROOT, error_line, script, snapshot
from utils.common.errors import run_cli


@pytest.fixture
def existing(tmp_path) -> Path:
    """An output dir holding earlier work, which a refused command must leave byte-for-byte as it was."""
    out = tmp_path / "run"
    (out / "checkpoint-4").mkdir(parents=True)
    (out / "checkpoint-4" / "model.safetensors").write_bytes(b"weights")
    (out / "metrics.jsonl").write_text('{"step": 4}\n')
    return out


def sft(out: Path, *extra: str, weights=("0.7", "0.3")) -> list[str]:
    return ["--config", "cfg.json", "--model_path", "model", "--data_dirs", "a", "b", "--data_weights", *weights,
            "--tokenizer_path", "tok", "--output_dir", str(out), *extra]


def pretrain(out: Path, *extra: str) -> list[str]:
    return ["--config", "cfg.json", "--tokenizer_path", "tok", "--output_dir", str(out), *extra]


BAD_RUN_FLAGS = [
    (("--max_steps", "0"), "--max_steps 0: must be an integer at least 1"),
    (("--max_steps", "-1"), "--max_steps -1: must be an integer at least 1"),
    (("--max_steps", "1.5"), "--max_steps '1.5': not an integer"),
    (("--seed", "-1"), "--seed -1: must be an integer between 0 and 4294967295"),
    (("--seed", str(2**70)), f"--seed {2**70}: must be an integer between 0 and 4294967295"),
]


@pytest.mark.parametrize("flags,message", BAD_RUN_FLAGS, ids=lambda v: " ".join(v) if isinstance(v, tuple) else None)
@pytest.mark.parametrize("stage", ["01_pretrain", "03_sft_industrial"])
def test_bad_max_steps_and_seed_are_refused_naming_the_flag(stage, flags, message, existing, capsys):
    before = snapshot(existing)
    argv = (sft if stage == "03_sft_industrial" else pretrain)(existing, *flags)
    assert run_cli(script(stage).main, argv) == 2
    assert message in error_line(capsys, alone=True)
    assert snapshot(existing) == before


@pytest.mark.parametrize("weights,message", [
    (("0", "0"), "--data_weights 0 0: all weights are 0; give at least one weight > 0"),
    (("nan", "1"), "--data_weights nan: each weight must be a finite number >= 0"),
    (("1", "inf"), "--data_weights inf: each weight must be a finite number >= 0"),
    (("-1", "2"), "--data_weights -1: each weight must be a finite number >= 0"),
    (("x", "2"), "--data_weights 'x': not a number"),
])
def test_bad_data_weights_are_refused_naming_the_flag(weights, message, existing, capsys):
    before = snapshot(existing)
    assert run_cli(script("03_sft_industrial").main, sft(existing, weights=weights)) == 2
    assert message in error_line(capsys, alone=True)
    assert snapshot(existing) == before


@pytest.mark.parametrize("stage,argv", [
    ("02_prepare_sft_corpus", ["--config", "c.json", "--tokenizer_path", "tok", "--num_proc", "0"]),
    ("04_evaluate_sft", ["--model_path", "m", "--batch_size", "0"]),
    ("04_evaluate_sft", ["--model_path", "m", "--max_new_tokens", "-3"]),
    ("04_evaluate_sft", ["--model_path", "m", "--max_eval_examples", "0"]),
])
def test_bad_counts_of_prepare_and_evaluation_are_refused(stage, argv, existing, capsys):
    before = snapshot(existing)
    assert run_cli(script(stage).main, [*argv, "--output_dir", str(existing)]) == 2
    flag, value = argv[-2:]
    assert f"{flag} {value}: must be an integer at least 1" in error_line(capsys, alone=True)
    assert snapshot(existing) == before


STAGES = {
    "01_pretrain": pretrain,
    "02_prepare_sft_corpus": lambda out: ["--config", "c.json", "--tokenizer_path", "tok", "--output_dir", str(out)],
    "03_sft_industrial": sft,
    "04_evaluate_sft": lambda out: ["--model_path", "m", "--output_dir", str(out)],
    "05_export_model": lambda out: ["--model_path", "m", "--output_dir", str(out)],
}


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_an_output_dir_that_is_a_file_or_below_a_file_is_one_line(stage, tmp_path, capsys):
    a_file = tmp_path / "notes.txt"
    a_file.write_text("mine\n")
    assert run_cli(script(stage).main, STAGES[stage](a_file)) == 2
    assert f"--output_dir {a_file}: is a file, not a directory" in error_line(capsys, alone=True)
    below = a_file / "run" / "sub"
    assert run_cli(script(stage).main, STAGES[stage](below)) == 2
    assert f"--output_dir {below}: is below {a_file}, which is a file, not a directory" in error_line(capsys, alone=True)
    assert a_file.read_text() == "mine\n" and sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


@pytest.mark.parametrize("stage,argv", [
    ("03_sft_industrial", ["--max_steps", "0"]),
    ("01_pretrain", ["--seed", str(2**70)]),
])
@pytest.mark.e2e
def test_through_the_real_cli_a_bad_value_is_one_line_and_exit_2(stage, argv, existing):
    before = snapshot(existing)
    args = (sft if stage == "03_sft_industrial" else pretrain)(existing, *argv)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / f"{stage}.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()] and proc.stderr.startswith(f"error: {argv[0]}")
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    assert snapshot(existing) == before
