"""No host-device sync in a steady-state training step: the CUDA code path, run on the CPU under
SFT_EMULATE_CUDA_KERNELS, under a dispatch mode that counts the ops a GPU's host would wait on
(utils/bench/syncs.py); full and LoRA, 1 and 2 processes. Steps that log, evaluate or checkpoint read numbers
back on purpose and are counted apart."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

import utils.model.kernels as kernels
from launch_helpers import torchrun
from paths import ROOT
from utils.bench.syncs import SyncCounter, bookkeeping_step
from utils.train.config import TrainingParams

WORKER = str(ROOT / "tests" / "train" / "syncs_worker.py")
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_the_counter_sees_what_makes_a_host_wait_and_nothing_else():
    x, mask = torch.arange(6.0), torch.tensor([True, False] * 3)
    counter = SyncCounter()
    with counter:
        x[mask], x.sum().item(), torch.nonzero(x), x.index_select(0, torch.tensor([0, 2])), x[torch.tensor([1])]
        x.clone()[mask] = 0.0
        counter.step = 1
        torch.repeat_interleave(x, torch.tensor([1] * 6)), torch.repeat_interleave(x, torch.tensor([1] * 6), output_size=6)
    assert dict(counter.by_step[0]) == {"index with a boolean mask": 1, "_local_scalar_dense": 1, "nonzero": 1,
                                        "index_put with a boolean mask": 1}
    assert dict(counter.by_step[1]) == {"repeat_interleave without output_size": 1}


def test_bookkeeping_steps_are_the_ones_that_log_evaluate_or_save():
    params = TrainingParams(max_steps=9, micro_batch_tokens=64, logging_steps=3, eval_steps=4, save_steps=0)
    assert [s for s in range(10) if bookkeeping_step(s, params, 9)] == [0, 1, 3, 4, 6, 8, 9]


@pytest.mark.parametrize("world", [1, 2])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_a_steady_state_step_makes_no_host_sync(lora, world, tmp_path):
    launcher = list(torchrun(2)) \
        if world == 2 else []
    env = {**os.environ, kernels.EMULATE_ENV: "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, *launcher, WORKER, str(tmp_path), *(["--lora"] if lora else [])], env=env,
                          capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads(line.split(" ", 1)[1]) for line in proc.stdout.splitlines() if line.startswith("SYNCS ")]
    assert sorted(r["rank"] for r in ranks) == list(range(world)), proc.stdout
    for rank in ranks:
        assert rank["world"] == world and rank["steady_steps"] == 2 and rank["micro_batches"] > 0, rank
        assert rank["per_micro_batch"] == 0, rank["describe"]
