"""Loading says what is wrong, through 03 and 04: a tokenizer directory without tokenizer files (empty, or a model
directory given as --tokenizer_path), a model directory without config.json or without weights (for each
architecture's files), and a read-only --output_dir on a fresh run are each one line naming what is missing and
what to pass; nothing is written and the inputs are unchanged."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

from arch_helpers import ARCHITECTURES, NEWER_ARCHITECTURES, save_tiny_model
from reliability_helpers import ROOT, SFT_SCRIPT, error_line, script, sft_argv, sft_config, sft_in_process, snapshot
from utils.common.errors import run_cli
from utils.data.tokenizer import load_tokenizer

TYPES = ("llama",) + ARCHITECTURES + NEWER_ARCHITECTURES
TOKENIZER_FIX = ("(no tokenizer.json, tokenizer_config.json or tokenizer.model); pass --tokenizer_path the "
                 "tokenizer directory the model was trained with")
MODEL_FIX = "pass --model_path the directory that holds config.json and the weights (e.g. the final/ of a run)"


def _model(work, tmp_path, model_type):
    """A copy of ``model_type``'s tiny model (config.json and weights, no tokenizer files), made once."""
    source = work / "model" if model_type == "llama" else work / f"model_{model_type}"
    if not source.exists():
        save_tiny_model(model_type, load_tokenizer(work / "tokenizer"), source)
    shutil.copytree(source, tmp_path / model_type)
    return tmp_path / model_type


def _sft(work, out, **paths):
    return sft_in_process(sft_argv(work, sft_config(work, "loading", lora=False, max_steps=2), out, **paths))


def _evaluate(work, model, out, tokenizer=None):
    extra = ["--tokenizer_path", str(tokenizer)] if tokenizer else []
    return run_cli(script("04_evaluate_sft").main, ["--model_path", str(model), "--output_dir", str(out),
                                                     "--data_dirs", str(work / "data" / "instruct"),
                                                     "--max_new_tokens", "2", "--no_progress", *extra])


def _refused(capsys, out, code) -> str:
    assert code == 2
    line = error_line(capsys)
    assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))
    return line


@pytest.mark.parametrize("stage", ("03", "04"))
def test_an_empty_tokenizer_directory_names_the_missing_files(work, tmp_path, capsys, stage):
    empty = tmp_path / "tokenizer"
    empty.mkdir()
    out = tmp_path / "out"
    code = (_sft(work, out, tokenizer=empty) if stage == "03" else
            _evaluate(work, work / "model", out, tokenizer=empty))
    assert _refused(capsys, out, code) == f"error: {empty}: is empty {TOKENIZER_FIX} (e.g. the final/ of a run, " \
                                          "or one `make tokenizer-train-mix` wrote)"
    assert not any(empty.iterdir())


@pytest.mark.parametrize("model_type", TYPES)
def test_each_architectures_files_missing_are_named(work, tmp_path, capsys, model_type):
    """A model directory given as --tokenizer_path; the model without config.json; the model without weights."""
    model = _model(work, tmp_path, model_type)
    before = snapshot(model)
    for stage in ("03", "04"):
        out = tmp_path / f"out_{stage}"
        code = (_sft(work, out, model=model, tokenizer=model) if stage == "03" else
                _evaluate(work, model, out, tokenizer=model))
        line = _refused(capsys, out, code)
        assert line.startswith(f"error: {model}: is a model directory without tokenizer files {TOKENIZER_FIX}"), line
    assert snapshot(model) == before
    weights = sorted(p for p in model.iterdir() if p.suffix == ".safetensors")
    for missing, what in (("config.json", "holds no config.json, so it is not a model directory; "),
                          ("weights", "has config.json but no weights (model.safetensors or pytorch_model.bin); ")):
        broken = tmp_path / f"without_{missing}"
        shutil.copytree(model, broken)
        for path in ([broken / "config.json"] if missing == "config.json" else [broken / p.name for p in weights]):
            path.unlink()
        kept = snapshot(broken)
        for stage in ("03", "04"):
            out = tmp_path / f"out_{missing}_{stage}"
            code = (_sft(work, out, model=broken) if stage == "03" else
                    _evaluate(work, broken, out, tokenizer=work / "tokenizer"))
            line = _refused(capsys, out, code)
            assert line.startswith(f"error: {broken}: {what}") and MODEL_FIX in line, line
        assert snapshot(broken) == kept


@pytest.mark.parametrize("stage", ("03", "04"))
def test_an_empty_model_directory_names_config_json_first(work, tmp_path, capsys, stage):
    """04 used to blame the tokenizer first, 03 transformers' "Should have a `model_type` key"."""
    empty = tmp_path / "model"
    empty.mkdir()
    out = tmp_path / "out"
    code = _sft(work, out, model=empty) if stage == "03" else _evaluate(work, empty, out)
    assert _refused(capsys, out, code) == f"error: {empty}: is empty, so it is not a model directory; {MODEL_FIX} " \
                                          "or a .gguf"


def _unprivileged() -> list[str]:
    """A command prefix under which file permissions apply (root bypasses them; setpriv drops that power)."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: file permissions cannot be made to apply")
    return ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


@pytest.mark.e2e
@pytest.mark.parametrize("stage", ("03", "04"))
def test_a_read_only_output_dir_on_a_fresh_run_says_so(work, tmp_path, stage):
    """It used to blame a .sft-pipeline-owner file that does not exist and suggest resuming from a checkpoint
    there is none of (03); 04 replaced the directory."""
    out = tmp_path / "out"
    out.mkdir()
    os.chmod(out, 0o555)
    if stage == "03":
        argv = [str(ROOT / SFT_SCRIPT), *sft_argv(work, sft_config(work, "loading_ro", lora=False), out)]
    else:
        argv = [str(ROOT / "scripts" / "04_evaluate_sft.py"), "--model_path", str(work / "model"), "--tokenizer_path",
                str(work / "tokenizer"), "--output_dir", str(out), "--no_progress"]
    try:
        proc = subprocess.run([*_unprivileged(), sys.executable, *argv], cwd=ROOT, capture_output=True, text=True,
                              timeout=300)
    finally:
        os.chmod(out, 0o755)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(errors) == 1, proc.stderr[-2000:]
    assert errors[0] == (f"error: --output_dir {out}: this user may not write in it (read-only); nothing was "
                         "written — make it writable (chmod u+w) or choose another --output_dir")
    assert not any(out.iterdir()) and not list(tmp_path.glob(".out*"))


def test_a_final_dir_carrying_the_trained_template_evaluates_without_tokenizer_path(work, tmp_path, capsys):
    """A tokenizer whose own chat template is not the one trained (chatml here): final/ carries the trained template,
    so its tokenizer files differ from the ones the data was prepared with, and 04 still evaluates it from final/
    alone, comparing the data with the fingerprint training recorded."""
    import json

    from utils.data.fingerprint import tokenizer_fingerprint

    tok = tmp_path / "tok"
    shutil.copytree(work / "tokenizer", tok)
    tokenizer = load_tokenizer(tok)
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}\n{% endfor %}"
    tokenizer.save_pretrained(tok)
    config = tmp_path / "ds.json"
    config.write_text(json.dumps({
        "name": "own", "template": "chatml", "seed": 1,
        "output_params": {"sequence_length": 128, "shard_size": 40, "train_ratio": 0.9},
        "datasets": [{"name": "own", "type": "jsonl", "dataset_name": str(work / "raw" / "instruct.jsonl")}]}))
    data, out = tmp_path / "data", tmp_path / "run"
    assert run_cli(script("02_prepare_sft_corpus").main, ["--config", str(config), "--output_dir", str(data),
                                                         "--tokenizer_path", str(tok), "--num_proc", "1"]) == 0
    argv = ["--config", str(sft_config(work, "own_template", max_steps=2, eval_steps=0, save_steps=0)),
            "--model_path", str(work / "model"), "--data_dirs", str(data), "--tokenizer_path", str(tok),
            "--output_dir", str(out)]
    assert sft_in_process(argv) == 0, capsys.readouterr().err[-2000:]
    assert (out / "final" / "chat_template.jinja").is_file()
    assert tokenizer_fingerprint(out / "final") != tokenizer_fingerprint(tok)
    capsys.readouterr()
    code = run_cli(script("04_evaluate_sft").main, ["--model_path", str(out / "final"), "--data_dirs", str(data),
                                                    "--output_dir", str(tmp_path / "eval"), "--max_new_tokens", "2",
                                                    "--no_progress"])
    captured = capsys.readouterr()
    assert code == 0, captured.err[-2000:]
    assert "as trained: final/ carries the trained chat template" in captured.out
    (out / "final" / "chat_template.jinja").write_text("{{ messages }}")  # not the trained template: refused
    code = run_cli(script("04_evaluate_sft").main, ["--model_path", str(out / "final"), "--data_dirs", str(data),
                                                    "--output_dir", str(tmp_path / "eval2"), "--max_new_tokens", "2",
                                                    "--no_progress"])
    assert code == 2 and "Tokenizer mismatch between datasets!" in capsys.readouterr().err
