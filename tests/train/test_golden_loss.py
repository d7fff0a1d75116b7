"""The golden loss: the tiny trainer's loss at steps 1, 10 and 20 held to values recorded on purpose.

The equivalence tests compare two runs of the same code, so a change that moves both sides alike (a label shifted
by one, a changed loss normalisation, a schedule off by a step) passes them all; this test sees it. The values
in golden_loss.json were recorded with the command below; re-record them only for a change meant to alter
training, and say so in the commit:

    SFT_RECORD_GOLDEN_LOSS=1 .venv/bin/python -m pytest -q tests/train/test_golden_loss.py

The tolerance (RTOL, relative) is for other CPUs summing in another order (one and two threads gave the same
values to the last bit here); a real change in training moves these losses by far more.
"""
from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import pytest
import torch

from train_helpers import run_training

GOLDEN = Path(__file__).with_name("golden_loss.json")
RECORD_ENV = "SFT_RECORD_GOLDEN_LOSS"
STEPS = (1, 10, 20)
RTOL = 2e-3


def _losses(tmp_path: Path, lora: bool) -> dict[str, float]:
    state, _ = run_training(tmp_path / "run", tokens=120, accum=2, steps=max(STEPS), learnable=True, lr=3e-2,
                            lora=lora)
    return {str(step): state.loss_history[step - 1] for step in STEPS}


@pytest.mark.parametrize("kind", ["full", "lora"])
def test_the_tiny_runs_loss_is_the_recorded_one(tmp_path, kind):
    losses = _losses(tmp_path, kind == "lora")
    if os.environ.get(RECORD_ENV) == "1":
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[kind] = losses
        golden["recorded_with"] = {"torch": torch.__version__, "machine": platform.processor() or platform.machine()}
        GOLDEN.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")
        pytest.skip(f"{RECORD_ENV}=1: recorded {kind} in {GOLDEN.name}")
    expected = json.loads(GOLDEN.read_text())[kind]
    assert losses == pytest.approx(expected, rel=RTOL), (
        f"the {kind} loss at steps {', '.join(expected)} is {losses}, recorded {expected}: training changed; if "
        f"that is meant, re-record with {RECORD_ENV}=1 (see this module's docstring)")
