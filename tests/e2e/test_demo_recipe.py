"""The main job's pre-training: tiny.json on a CPU, tiny_long.json where a GPU is found; each keeps its own runs."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from paths import ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(tmp_path, gpu: bool, *variables: str) -> list[str]:
    """The commands `make sft-pipeline-complete` would run (all of them: -B), with or without nvidia-smi."""
    shim = tmp_path / "bin"
    shim.mkdir(exist_ok=True)
    if gpu:
        (shim / "nvidia-smi").write_text("#!/bin/sh\nexit 0\n")
        (shim / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{shim}{os.pathsep}{os.environ['PATH']}"}
    env.pop("DEMO_PRETRAIN_CONFIG", None)
    done = subprocess.run(["make", "-B", "-n", "-C", str(ROOT), "sft-pipeline-complete", "cpt-ift-pipeline",
                           *variables], capture_output=True, text=True, env=env, check=True)
    return done.stdout.splitlines()


def flag_values(lines: list[str], script: str, flag: str) -> set[str]:
    joined = " ".join(lines).replace("\\ ", " ")
    return {part.split()[part.split().index(flag) + 1] for part in joined.split(".venv/bin/python")[1:]
            if script in part and flag in part.split()}


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_without_a_gpu_the_demo_pretrains_with_tiny_json_into_demo_job(tmp_path):
    lines = dry_run(tmp_path, gpu=False)
    assert 'echo "demo pre-training: config/pretrain/tiny.json (no GPU (nvidia-smi not found)) -> ' \
           'checkpoints/pretrain/demo_job"' in lines
    assert flag_values(lines, "01_pretrain.py", "--config") == {"config/pretrain/tiny.json",
                                                                "config/pretrain/cpt_lora_tiny.json"}
    assert flag_values(lines, "03_sft_industrial.py", "--output_dir") == {
        "checkpoints/sft_industrial/demo_job", "checkpoints/sft_industrial/demo_job_cpt_ift"}


def test_with_a_gpu_the_demo_pretrains_longer_and_keeps_runs_of_its_own(tmp_path):
    lines = dry_run(tmp_path, gpu=True)
    assert 'echo "demo pre-training: config/pretrain/tiny_long.json (a GPU is present (nvidia-smi found)) -> ' \
           'checkpoints/pretrain/demo_job_tiny_long"' in lines
    assert "config/pretrain/tiny_long.json" in flag_values(lines, "01_pretrain.py", "--config")
    assert flag_values(lines, "03_sft_industrial.py", "--model_path") == {
        "checkpoints/pretrain/demo_job_tiny_long/final", "checkpoints/cpt/demo_job_tiny_long/final"}
    assert flag_values(lines, "03_sft_industrial.py", "--output_dir") == {
        "checkpoints/sft_industrial/demo_job_tiny_long", "checkpoints/sft_industrial/demo_job_tiny_long_cpt_ift"}
    evaluated_against = flag_values(lines, "04_evaluate_sft.py", "--base_model_path")
    assert "checkpoints/pretrain/demo_job_tiny_long/final" in evaluated_against
    # the SFT corpus does not depend on the recipe: one for both
    assert flag_values(lines, "03_sft_industrial.py", "--data_dirs") == {
        "data/sft_processed/demo_job", "data/sft_processed/demo_job_hybrid"}


def test_a_recipe_named_by_the_user_is_said_to_be_theirs(tmp_path):
    lines = dry_run(tmp_path, True, "DEMO_PRETRAIN_CONFIG=config/pretrain/tiny.json")
    assert 'echo "demo pre-training: config/pretrain/tiny.json (DEMO_PRETRAIN_CONFIG given) -> ' \
           'checkpoints/pretrain/demo_job"' in lines
