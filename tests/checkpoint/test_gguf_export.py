"""05_export_model.py --gguf: llama.cpp's own converter, checked by a real client (llama-cpp-python).

Needs requirements-gguf.txt (``make gguf``; ``make test`` installs it); skipped cleanly without it."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from test_export import export_script, run_dir  # noqa: F401  (the module-scoped fake SFT run)
from utils.checkpoint.gguf_export import GGUF_TYPES, converter_dir
from utils.common.errors import UserError, run_cli

try:
    converter_dir()
    HAVE_GGUF = importlib.util.find_spec("llama_cpp") is not None
except UserError:
    HAVE_GGUF = False
needs_gguf = pytest.mark.skipif(not HAVE_GGUF, reason="GGUF extras not installed (make gguf)")


@pytest.fixture(scope="module")
def gguf_export(run_dir) -> Path:  # noqa: F811
    out = run_dir / "export_gguf"
    assert export_script.main(["--model_path", str(run_dir / "run" / "final"), "--output_dir", str(out),
                               "--gguf", "f16", "q8_0"]) == 0
    return out


@pytest.mark.e2e
@needs_gguf
def test_llama_cpp_reads_the_file_with_the_trained_template(gguf_export):
    from llama_cpp import Llama

    f16, q8 = gguf_export / "export_gguf-f16.gguf", gguf_export / "export_gguf-q8_0.gguf"
    assert f16.is_file() and q8.is_file()
    assert not list(gguf_export.glob("*.raw")) and not list(gguf_export.glob("*.gguf.json"))
    llm = Llama(model_path=str(f16), n_ctx=256, verbose=False)
    template = llm.metadata["tokenizer.chat_template"]
    llm.close()
    assert "<|im_start|>" in template and "{% generation %}" not in template
    modelfile = (gguf_export / "Modelfile").read_text()
    assert "FROM ./export_gguf-f16.gguf" in modelfile and 'PARAMETER stop "<|im_end|>"' in modelfile


@pytest.mark.e2e
@needs_gguf
def test_greedy_tokens_equal_transformers_and_the_card_says_so(gguf_export, capsys):
    card = (gguf_export / "README.md").read_text()
    assert "## GGUF" in card and "export_gguf-f16.gguf" in card
    row = next(line for line in card.splitlines() if line.startswith("| `export_gguf-f16.gguf`"))
    assert row.endswith("| yes | 3/3 |"), row  # f16: prompt ids and the first 16 greedy tokens equal, 3 prompts
    assert "gguf" in card.split("---")[1]  # tag in the Hub front matter


@pytest.mark.e2e
@needs_gguf
def test_q8_0_is_about_half_of_f16(gguf_export):
    f16 = (gguf_export / "export_gguf-f16.gguf").stat().st_size
    q8 = (gguf_export / "export_gguf-q8_0.gguf").stat().st_size
    assert q8 <= 0.55 * f16 or f16 < 2**20, (q8, f16)  # a toy model is mostly metadata and vocabulary


def test_unknown_gguf_type_is_one_line(run_dir, tmp_path, capsys):  # noqa: F811
    args = ["--model_path", str(run_dir / "run" / "final"), "--output_dir", str(tmp_path / "o"), "--gguf", "q3_x"]
    with pytest.raises(SystemExit):
        export_script.main(args)
    assert "q3_x" in capsys.readouterr().err and not (tmp_path / "o").exists()
    assert set(GGUF_TYPES) >= {"f16", "q8_0"}


@needs_gguf
def test_an_architecture_llama_cpp_cannot_convert_is_refused(run_dir, tmp_path, capsys):  # noqa: F811
    import shutil

    base = tmp_path / "base"
    shutil.copytree(run_dir / "base", base)
    config = json.loads((base / "config.json").read_text())
    config["architectures"] = ["NotARealForCausalLM"]
    (base / "config.json").write_text(json.dumps(config))
    previous = tmp_path / "o"
    previous.mkdir()
    args = ["--model_path", str(run_dir / "run" / "final"), "--output_dir", str(previous),
            "--base_model_path", str(base), "--gguf"]
    assert run_cli(export_script.main, args) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: --gguf") and "NotARealForCausalLM" in err, err
    assert list(previous.iterdir()) == []


@pytest.mark.e2e
@needs_gguf
def test_a_failed_conversion_leaves_the_previous_export(run_dir, gguf_export, tmp_path, monkeypatch, capsys):  # noqa: F811
    from utils.checkpoint import gguf_export as module

    before = {p.name: p.read_bytes() for p in gguf_export.iterdir() if p.is_file()}

    def fail(argv, what, llama_cpp):
        raise UserError(f"--gguf: llama.cpp's {what} failed (exit 1): stopped")

    monkeypatch.setattr(module, "run_llama_cpp", fail)
    args = ["--model_path", str(run_dir / "run" / "final"), "--output_dir", str(gguf_export), "--gguf", "q8_0"]
    assert run_cli(export_script.main, args) == 2
    assert "convert_hf_to_gguf.py failed" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in gguf_export.iterdir() if p.is_file()} == before


@pytest.mark.e2e
@needs_gguf
def test_a_sigkill_during_the_gguf_conversion_leaves_the_previous_export(run_dir, gguf_export, tmp_path):  # noqa: F811
    """A real SIGKILL in the middle of --gguf (the process dies as llama.cpp's converter starts): the previous export
    is byte for byte as it was, and the next export replaces it whole."""
    import os
    import signal
    import subprocess
    import sys

    from paths import ROOT

    before = {p.name: p.read_bytes() for p in gguf_export.iterdir() if p.is_file()}
    args = ["--model_path", str(run_dir / "run" / "final"), "--output_dir", str(gguf_export), "--gguf", "q8_0"]
    killer = (
        "import os, signal, sys; sys.path[:0] = [{root!r}, {tests!r}]\n"
        "from scripts_loader import load_script\n"
        "import utils.checkpoint.gguf_export as gguf\n"
        "gguf.run_llama_cpp = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
        "sys.exit(load_script('05_export_model').main({args!r}))\n").format(
        root=str(ROOT), tests=str(ROOT / "tests"), args=args)
    proc = subprocess.run([sys.executable, "-c", killer], cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in gguf_export.iterdir() if p.is_file()} == before
    assert export_script.main(args) == 0  # the next run sweeps what the killed one left and publishes whole
    assert (gguf_export / f"{gguf_export.name}-q8_0.gguf").exists() or any(gguf_export.glob("*q8_0.gguf"))
    assert not list(gguf_export.parent.glob(f".{gguf_export.name}*"))
