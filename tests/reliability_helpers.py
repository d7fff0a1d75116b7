"""Shared parts of the reliability suite (tests/test_reliability_*.py).

A small SFT work dir made in seconds by the real code (the session's toy tokenizer, a randomly initialised
2-layer model, two corpora prepared by 02's main()), runners for 03 in this process or in a subprocess
under tests/fault_inject.py, and what two runs are compared on.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import torch

from scripts_loader import load_script
from utils.common.errors import run_cli

ROOT = Path(__file__).resolve().parents[1]
FAULT_SCRIPT = ROOT / "tests" / "fault_inject.py"
SFT_SCRIPT = "scripts/03_sft_industrial.py"
TIMING_KEYS = {"tokens_per_s", "elapsed_s", "process_cpu_s"}
"""Metrics that measure the machine, not the run: left out when two runs are compared."""
_BUILT: dict[str, Path] = {}
_SCRIPTS: dict = {}


def error_line(capsys, alone: bool = False) -> str:
    """The one ``error:`` line a refused run printed (no traceback); ``alone``: nothing else on stderr."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1, err[-3000:]
    assert not alone or len(err.strip().splitlines()) == 1, err[-3000:]
    return lines[0]


def script(stem: str):
    """A numbered script imported once per session."""
    if stem not in _SCRIPTS:
        _SCRIPTS[stem] = load_script(stem)
    return _SCRIPTS[stem]


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    return path


def snapshot(path: Path, skip: tuple[str, ...] = ()) -> dict[str, bytes]:
    """Every file below ``path`` (hidden ones too) and its bytes, but those under a folder named in ``skip``."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file() and not set(p.relative_to(path).parts) & set(skip)}


def sft_work(tmp_path_factory, tokenizer_dir: Path) -> Path:
    """Two prepared corpora and a tiny model, built once per session whichever module asks first."""
    if "work" not in _BUILT:
        _BUILT["work"] = _build(tmp_path_factory.mktemp("reliability"), tokenizer_dir)
    return _BUILT["work"]


def _build(work: Path, tokenizer_dir: Path) -> Path:
    raw = work / "raw"
    raw.mkdir()
    sums = [{"messages": [{"role": "user", "content": f"What is {a} plus {b}?"},
                          {"role": "assistant", "content": f"The answer is {a + b}."}]}
            for a in range(20) for b in range(0, 40, 5)]
    chats = [{"messages": [{"role": "system", "content": "Be brief."},
                           {"role": "user", "content": f"Reverse the list [{i}, {i + 1}, {i + 2}]."},
                           {"role": "assistant", "content": f"[{i + 2}, {i + 1}, {i}]"},
                           {"role": "user", "content": "And sorted?"},
                           {"role": "assistant", "content": f"[{i}, {i + 1}, {i + 2}]"}]} for i in range(60)]
    for name, rows in (("instruct", sums), ("chat", chats)):
        (raw / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        config = write_json(work / f"ds_{name}.json", {
            "name": name, "template": "chatml", "seed": 1,
            "output_params": {"sequence_length": 128, "shard_size": 40, "train_ratio": 0.9},
            "datasets": [{"name": name, "type": "jsonl", "dataset_name": str(raw / f"{name}.jsonl")}]})
        code = run_cli(script("02_prepare_sft_corpus").main, [
            "--config", str(config), "--output_dir", str(work / "data" / name),
            "--tokenizer_path", str(tokenizer_dir), "--num_proc", "1"])
        assert code == 0
    save_tiny_llama(tokenizer_dir, work / "model")
    (work / "tokenizer").symlink_to(tokenizer_dir)
    return work


def save_tiny_llama(tokenizer_dir: Path, out: Path, seed: int = 0) -> Path:
    """A randomly initialised 2-layer, 32-wide Llama-layout model sized to the tokenizer, saved in ``out``."""
    from utils.data.tokenizer import load_tokenizer
    from utils.model.modeling import ModelArchitecture, build_model

    arch = ModelArchitecture(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                             intermediate_size=64, max_position_embeddings=256)
    build_model(arch, load_tokenizer(tokenizer_dir), seed=seed).save_pretrained(out)
    return out


SMALL_TRAINING = {"learning_rate": 0.003, "max_steps": 8, "micro_batch_tokens": 256, "warmup_steps": 1,
                  "logging_steps": 1, "eval_steps": 3, "save_steps": 2, "save_total_limit": 2, "eval_max_batches": 2,
                  "bf16": False, "seed": 7}
"""The reliability suite's training parameters: packing (micro_batch_tokens), checkpoints every 2 steps, 2 kept,
eval every 3."""


def sft_config(work: Path, name: str, lora: bool = True, base: dict = SMALL_TRAINING, max_new_tokens: int = 3,
               **params) -> Path:
    """``work/<name>.json``: an SFT config of ``base`` training parameters changed by ``params``, one eval prompt
    answered in ``max_new_tokens``, and a small LoRA unless ``lora`` is False."""
    config = {"name": name, "training_params": {**base, **params},
              "evaluation_config": {"eval_prompts": ["What is 2 plus 3?"],
                                    "generation_config": {"max_new_tokens": max_new_tokens}}}
    if lora:  # dropout > 0, so an exact resume must restore the RNG too
        config["lora_config"] = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.1,
                                 "target_modules": ["q_proj", "v_proj", "up_proj"]}
    return write_json(work / f"{name}.json", config)


def sft_argv(work: Path, config: Path, out: Path, *extra: str, data=("instruct", "chat"),
             weights=("0.7", "0.3"), tokenizer: Path | None = None, model: Path | None = None) -> list[str]:
    """03's arguments: two weighted data dirs by default."""
    argv = ["--config", str(config), "--model_path", str(model or work / "model"),
            "--data_dirs", *[str(work / "data" / d) for d in data],
            "--tokenizer_path", str(tokenizer or work / "tokenizer"), "--output_dir", str(out)]
    if weights:
        argv += ["--data_weights", *weights]
    return argv + list(extra)


def sft_in_process(argv: list[str]) -> int:
    """03's main() under run_cli in this process (no interpreter start-up: the fast way to train), with accelerate's
    process-wide state reset first, as a new process would have it."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    return run_cli(script("03_sft_industrial").main, argv)


def reference_run(work: Path, mode: str) -> Path:
    """The uninterrupted run of ``sft_config(work, f"rel_{mode}")`` ("lora" or "full"), made once."""
    key = f"reference_{mode}"
    if key not in _BUILT:
        out = work / "out" / f"straight_{mode}"
        assert sft_in_process(sft_argv(work, sft_config(work, f"rel_{mode}", lora=mode == "lora"), out)) == 0
        _BUILT[key] = out
    return _BUILT[key]


def sft_with_fault(fault: str, argv: list[str], timeout: int = 300,
                   launcher: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    """03 in a subprocess with ``fault`` injected by tests/fault_inject.py."""
    cmd = [sys.executable, *launcher, str(FAULT_SCRIPT), fault, SFT_SCRIPT, *argv]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted((out / "final").glob("*.safetensors"))
    assert files, f"{out}/final has no weights"
    return {k: v for f in files for k, v in load_file(str(f)).items()}


def newest_state(out: Path) -> dict:
    from utils.checkpoint.checkpoints import list_checkpoints

    return json.loads((list_checkpoints(out)[-1] / "training_state.json").read_text())


def metrics(out: Path) -> list[dict]:
    """metrics.jsonl without the timing fields."""
    from utils.monitor.metrics_log import read_metrics

    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(out / "metrics.jsonl")]


def samples(out: Path) -> list[str]:
    path = out / "samples.jsonl"
    return path.read_text(encoding="utf-8").splitlines() if path.exists() else []


def assert_same_run(a: Path, b: Path) -> None:
    """Bit-identical final weights, loss history, metrics and generation samples."""
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"weights differ: {different[:5]}"
    assert newest_state(a)["loss_history"] == newest_state(b)["loss_history"]
    assert metrics(a) == metrics(b)
    assert samples(a) == samples(b)


CHECKPOINT_FILES = ("optimizer.pt", "scheduler.pt", "rng_state_0.pt", "training_state.json", "checksums.json",
                    "COMPLETE")


def assert_checkpoints_whole(out: Path) -> list[Path]:
    """Every checkpoint auto-resume could pick has all its files, they match their recorded sha256, and they load."""
    from utils.checkpoint.checkpoints import list_checkpoints, verify_checkpoint

    found = list_checkpoints(out)
    for path in found:
        names = {p.name for p in path.iterdir()}
        assert set(CHECKPOINT_FILES) <= names, f"{path} lacks {set(CHECKPOINT_FILES) - names}"
        assert names & {"model.safetensors", "adapter_model.safetensors"}, f"{path} has no weights"
        assert verify_checkpoint(path) is None, f"{path}: {verify_checkpoint(path)}"
        for name in ("optimizer.pt", "scheduler.pt", "rng_state_0.pt"):
            torch.load(path / name, weights_only=True)
        json.loads((path / "training_state.json").read_text())
    return found
