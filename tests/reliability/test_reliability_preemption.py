"""Reliability: SIGTERM (what SLURM and Kubernetes send before SIGKILL) and SIGINT lose nothing. The run
finishes the optimizer step it is in, writes a checkpoint, says so in one line and exits 143 / 130;
--resume_from_checkpoint auto then ends bit-identical to an uninterrupted run. Under torchrun a signal that
reaches one rank stops every rank at the same step."""
from __future__ import annotations

import re

import numpy as np
import pytest

from launch_helpers import torchrun
from reliability_helpers import (assert_same_run, final_weights, newest_state, reference_run, sft_argv, sft_config,
                                 sft_in_process, sft_with_fault)


def stop_line(proc) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.startswith(("stopped:", "error:"))]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("fault, code, name", [("term@update:5", 143, "SIGTERM"), ("int@update:3", 130, "SIGINT")])
def test_a_signal_checkpoints_the_step_in_progress_and_auto_resumes_bit_identically(work, fault, code, name):
    """save_steps 2: step 5 is no checkpoint step, so checkpoint-5 exists only because of the signal; step 3
    is an eval step, so the evaluation of the step is kept too."""
    config = sft_config(work, "rel_lora")
    out = work / "out" / f"preempted_{name}"
    proc = sft_with_fault(fault, sft_argv(work, config, out))
    step = int(fault.rsplit(":", 1)[1])
    assert proc.returncode == code, proc.stderr[-3000:]
    line = stop_line(proc)
    assert line == (f"stopped: {name} received: finished step {step} of 8 and wrote {out}/checkpoint-{step}; "
                    "continue with --resume_from_checkpoint auto")
    assert newest_state(out)["step"] == step and not (out / "final").exists()
    assert sft_in_process(sft_argv(work, config, out, "--resume_from_checkpoint", "auto")) == 0
    assert_same_run(reference_run(work, "lora"), out)


def test_a_signal_to_one_of_two_processes_stops_both_at_the_same_step(work):
    """torchrun, 2 ranks, gloo: only rank 1 receives SIGTERM after step 3; both ranks stop after step 3 and the
    checkpoint holds both RNG states; resumed on 2 ranks the run equals an uninterrupted 2-rank run."""
    common = {"max_steps": 6, "eval_steps": 0, "save_steps": 4, "save_total_limit": None}
    config = sft_config(work, "rel_preempt_world2", lora=False, gradient_accumulation_steps=1, **common)
    ref, out = work / "out" / "preempt_world2_straight", work / "out" / "preempt_world2"

    def launch(fault: str, *extra: str):
        launcher = torchrun(2)
        return sft_with_fault(fault, sft_argv(work, config, *extra), launcher=launcher)

    proc = launch("term-rank1@update:3", out)
    assert proc.returncode != 0 and not (out / "final").exists(), proc.stderr[-3000:]
    assert proc.stderr.count("stopped: SIGTERM received: finished step 3 of 6") == 1, proc.stderr[-3000:]
    # torchrun reports its failed workers with its own traceback; no worker has one. The signalled rank exits
    # 143; torchrun then sends SIGTERM to a rank still on its way out, so that one reports 143 or -15.
    assert "utils/" not in proc.stderr.split("ChildFailedError")[0] and "scripts/03" not in proc.stderr, proc.stderr
    codes = [int(c) for c in re.findall(r"exitcode\s*:\s*(-?\d+)", proc.stderr)]
    assert 143 in codes and set(codes) <= {143, -15}, proc.stderr[-3000:]
    state = newest_state(out)
    assert state["step"] == 3 and state["world_size"] == 2
    assert {p.name for p in (out / "checkpoint-3").glob("rng_state_*.pt")} == {"rng_state_0.pt", "rng_state_1.pt"}
    assert launch("term@update:99", out, "--resume_from_checkpoint", "auto").returncode == 0
    assert launch("term@update:99", ref).returncode == 0
    a, b = final_weights(out), final_weights(ref)
    assert newest_state(out)["loss_history"] == newest_state(ref)["loss_history"]
    assert all(np.array_equal(a[k].numpy(), b[k].numpy()) for k in a)
