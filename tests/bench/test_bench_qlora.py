"""The QLoRA comparison: ratios QLoRA / LoRA, its table, and the peak memory each run reports."""
from __future__ import annotations

from pathlib import Path

from utils.bench.benchmark import Case
from utils.bench.qlora import QLORA, _row, qlora_table
from utils.bench.runners import RunSpec

ROOT = Path(__file__).resolve().parents[2]


def _run(tok_s: float, loss: float, rss: float) -> dict:
    return {"window": {"supervised_per_s": tok_s, "mean_loss": loss}, "peak_rss_mb": rss}


def test_ratios_take_the_fastest_window_and_the_lowest_peak_of_the_repeats():
    case = Case("smollm2-lora-gc@512", "smollm2", 512, "m", "t", "d", 8, 5e-4, {"r": 16})
    row = _row(case, [_run(40, 1.0, 3000), _run(50, 1.0, 3100)], [_run(20, 1.01, 1500), _run(10, 1.01, 1800)])
    assert row["case"] == "smollm2 (gradient checkpointing)@512"
    assert row["memory_ratio"] == 0.5 and row["speed_ratio"] == 0.4
    assert abs(row["loss_change"] - 0.01) < 1e-12
    text = qlora_table({"rows": [row], "notes": ["small left out"]})
    assert "| 3,000 / 1,500 | 0.50x | 50.0 / 20.0 | 0.40x | 1.0000 / 1.0100 | +1.00% |" in text
    assert text.endswith("note: small left out")


def test_the_run_spec_carries_the_quantization_block_as_the_config_schema_takes_it():
    from utils.common.config import validate

    spec = RunSpec("ours", "m", "t", "d", "w", [0], 1, 1, 16, 1e-3, quantization=QLORA)
    validate({"name": "x", "training_params": {"micro_batch_tokens": 16}, "lora_config": {"r": 4},
              "quantization": spec.quantization}, "sft_training", "bench")


def test_peak_rss_of_a_child_process_is_its_own_not_its_parents():
    """ru_maxrss of a fork+exec child starts at the parent's peak; the benchmark's children must not."""
    import subprocess
    import sys

    from utils.bench.metrics import peak_rss_mb

    ballast = bytearray(300 * 2**20)
    ballast[::4096] = b"\1" * len(ballast[::4096])  # touch every page: 300 MiB resident in this process
    assert peak_rss_mb() > 300
    code = "from utils.bench.metrics import peak_rss_mb; print(peak_rss_mb())"
    child = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert float(child.stdout) < 250, child.stdout
    del ballast
