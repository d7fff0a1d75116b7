"""Damaged or unreadable model inputs are one line naming the file, before a stage writes anything: a
truncated model.safetensors, a truncated .gguf, and a file this user may not read (named as a permission
problem, not as "No such file or directory")."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from reliability_helpers import ROOT, SFT_SCRIPT, error_line, sft_argv, sft_config, sft_in_process


def _nothing_written(out):
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


@pytest.mark.parametrize("keep", ["half", "100 bytes"])
def test_a_truncated_model_safetensors_is_one_line_naming_the_file(work, tmp_path, capsys, keep):
    model = tmp_path / "model"
    shutil.copytree(work / "model", model)
    weights = model / "model.safetensors"
    size = weights.stat().st_size
    with open(weights, "r+b") as handle:
        handle.truncate(size // 2 if keep == "half" else 100)
    out = tmp_path / "out" / "run"
    out.parent.mkdir()
    assert sft_in_process(sft_argv(work, sft_config(work, "trunc", lora=False), out, model=model)) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {weights}: truncated or damaged weights (") and "download the model again" in line
    _nothing_written(out)


def _tiny_gguf(path):
    import numpy as np
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.arange(64 * 32, dtype=np.float32).reshape(64, 32))
    writer.add_tensor("output_norm.weight", np.ones(32, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("cut", ["header", "tensor data"])
def test_a_truncated_gguf_is_one_line_naming_the_file(work, tmp_path, capsys, cut):
    gguf = _tiny_gguf(tmp_path / "m.gguf")
    data = gguf.read_bytes()
    gguf.write_bytes(data[:60] if cut == "header" else data[:-100])
    out = tmp_path / "out" / "run"
    out.parent.mkdir()
    assert sft_in_process(sft_argv(work, sft_config(work, "trunc_gguf", lora=False), out, model=gguf)) == 2
    line = error_line(capsys, alone=True)
    assert line.startswith(f"error: {gguf}: not a complete GGUF file (") and "truncated" in line
    _nothing_written(out)
    assert not (tmp_path / "m.gguf.hf").exists()


def _as_unprivileged() -> list[str]:
    """A command prefix under which file permissions apply: none for a normal user; for root, setpriv
    without the capabilities that bypass them (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH)."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: file permissions cannot be made to apply")
    return [setpriv, "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.e2e
@pytest.mark.parametrize("what", ["weights file", "model directory"])
def test_an_unreadable_model_is_reported_as_a_permission_problem(work, tmp_path, what):
    """Before, transformers reported an unreadable model.safetensors as "No such file or directory", and a
    directory that may not be listed read as "model not found; train one first"."""
    prefix = _as_unprivileged()
    model = tmp_path / "model"
    shutil.copytree(work / "model", model)
    locked = model / "model.safetensors" if what == "weights file" else model
    out = tmp_path / "out" / "run"
    out.parent.mkdir()
    os.chmod(locked, 0)
    try:
        proc = subprocess.run([*prefix, sys.executable, str(ROOT / SFT_SCRIPT),
                               *sft_argv(work, sft_config(work, "perm", lora=False), out, model=model)],
                              cwd=ROOT, capture_output=True, text=True, timeout=300)
    finally:
        os.chmod(locked, 0o755 if locked.is_dir() else 0o644)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith(f"error: {locked}: permission denied reading the model; make it readable")
    assert "No such file" not in errors[0] and "not found" not in errors[0]
    _nothing_written(out)
