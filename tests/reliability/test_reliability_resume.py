"""Reliability: SIGKILL anywhere, resume with ``auto``, and end bit-identical; seeds; 2 processes -> 1.

Each killed run is the real 03 script in a subprocess, killed by tests/fault_inject.py at an exact point
(seeded choice of step and phase); the reference runs and the final resumes run 03's main() in this
process. Everything is CPU, two weighted data dirs, packed micro-batches.
"""
from __future__ import annotations

import random
import signal

import numpy as np
import pytest

from launch_helpers import torchrun
from reliability_helpers import (assert_checkpoints_whole, assert_same_run, final_weights, metrics, newest_state,
                                 reference_run, sft_argv, sft_config, sft_in_process, sft_with_fault)
from train_helpers import random_store, run_training
from utils.checkpoint.checkpoints import resolve_resume

MAX_STEPS, SAVE_STEPS, EVAL_STEPS = 8, 2, 3
PHASES = ("backward", "update", "eval", "ckpt-write", "ckpt-publish", "rotate")
KILLED = -signal.SIGKILL


def fires_at(phase: str, step: int) -> bool:
    """Whether ``phase`` happens at ``step`` with this suite's config (saves every 2, keep 2, eval every 3)."""
    saving = step % SAVE_STEPS == 0 or step == MAX_STEPS
    return {"backward": True, "update": True, "eval": step % EVAL_STEPS == 0 or step == MAX_STEPS,
            "ckpt-write": saving, "ckpt-publish": saving,
            "rotate": saving and step >= 3 * SAVE_STEPS}[phase]  # the first save that deletes one


def kill_plan(seed: int, kills: int) -> list[str]:
    """``kills`` faults at increasing steps, each step and phase drawn from ``random.Random(seed)``."""
    rng = random.Random(seed)
    steps = sorted(rng.sample(range(1, MAX_STEPS + 1), kills))
    return [f"kill@{rng.choice([p for p in PHASES if fires_at(p, s)])}:{s}" for s in steps]


def kill(fault: str, argv: list[str]) -> None:
    proc = sft_with_fault(fault, argv)
    assert proc.returncode == KILLED, f"{fault}: exit {proc.returncode}, not killed\n{proc.stderr[-2000:]}"
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("mode, seed, kills", [("lora", 5, 3), ("full", 2, 2)])
def test_sigkill_at_random_points_then_auto_resume_is_bit_identical(work, mode, seed, kills):
    plan = kill_plan(seed, kills)
    out = work / "out" / f"killed_{mode}"
    argv = sft_argv(work, sft_config(work, f"rel_{mode}", lora=mode == "lora"), out,
                    "--resume_from_checkpoint", "auto")
    for fault in plan:
        kill(fault, argv)
        step = int(fault.rsplit(":", 1)[1])
        assert not (out / "final").exists(), f"{plan}: {fault} did not stop the run"
        found = assert_checkpoints_whole(out)
        chosen = resolve_resume("auto", out)
        assert chosen == (found[-1] if found else None)
        assert chosen is None or newest_state(out)["step"] <= step
    assert sft_in_process(argv) == 0, plan
    assert_same_run(reference_run(work, mode), out)


def test_sigkill_while_writing_publishing_or_rotating_checkpoints(work):
    """Killed halfway through checkpoint-4, after checkpoint-6 was complete but not renamed, and while
    rotation deleted checkpoint-2: auto-resume never takes a partial checkpoint, the run ends exact."""
    out = work / "out" / "ckpt_faults"
    argv = sft_argv(work, sft_config(work, "rel_full", lora=False), out, "--resume_from_checkpoint", "auto")

    kill("kill@ckpt-write:4", argv)
    partial = out / ".checkpoint-4.tmp"
    assert (partial / "model.safetensors").is_file() and not (partial / "COMPLETE").exists()
    assert not (out / "checkpoint-4").exists()
    assert [p.name for p in assert_checkpoints_whole(out)] == ["checkpoint-2"]
    assert resolve_resume("auto", out) == out / "checkpoint-2"

    kill("kill@ckpt-publish:6", argv)  # resumed from 2, rewrote 4, died with 6 complete but unpublished
    assert (out / ".checkpoint-6.tmp" / "COMPLETE").is_file() and not (out / "checkpoint-6").exists()
    assert not (out / ".checkpoint-4.tmp").exists()
    assert resolve_resume("auto", out) == out / "checkpoint-4"

    kill("kill@rotate:6", argv)  # resumed from 4: 6 published, then died deleting 2
    assert [p.name for p in assert_checkpoints_whole(out)] == ["checkpoint-4", "checkpoint-6"]
    assert resolve_resume("auto", out) == out / "checkpoint-6"

    assert sft_in_process(argv) == 0
    assert_same_run(reference_run(work, "full"), out)
    assert not list(out.glob(".checkpoint-*")), "temp and half-deleted checkpoints are swept"


def test_checkpoint_of_two_processes_resumes_on_one_with_the_same_data_order(work):
    """torchrun 2 ranks (accumulation 1) killed at step 3; resumed on 1 process with accumulation 2 it
    continues the same global plan: same tokens and, within float tolerance, the same losses and weights
    as an uninterrupted 1-process run with accumulation 2."""
    common = {"max_steps": 4, "eval_steps": 0, "save_total_limit": None}
    two = sft_config(work, "rel_world2", lora=False, gradient_accumulation_steps=1, **common)
    one = sft_config(work, "rel_world1", lora=False, gradient_accumulation_steps=2, **common)
    ref, out = work / "out" / "world1_straight", work / "out" / "world2_then_1"
    assert sft_in_process(sft_argv(work, one, ref)) == 0
    launcher = torchrun(2)
    proc = sft_with_fault("kill@update:3", sft_argv(work, two, out), launcher=launcher)
    assert proc.returncode != 0 and not (out / "final").exists(), proc.stderr[-2000:]
    assert newest_state(out)["world_size"] == 2 and newest_state(out)["step"] == 2
    assert {p.name for p in (out / "checkpoint-2").glob("rng_state_*.pt")} == {"rng_state_0.pt", "rng_state_1.pt"}

    assert sft_in_process(sft_argv(work, one, out, "--resume_from_checkpoint", "auto")) == 0
    resumed, straight = newest_state(out), newest_state(ref)
    assert resumed["world_size"] == 1 and resumed["tokens_seen"] == straight["tokens_seen"]
    assert resumed["planner"] == straight["planner"]
    assert resumed["loss_history"] == pytest.approx(straight["loss_history"], rel=1e-4)
    a, b = final_weights(out), final_weights(ref)
    assert all(np.allclose(a[k].numpy(), b[k].numpy(), atol=1e-5) for k in a)


def test_same_seed_gives_identical_metrics(tmp_path):
    first, _ = run_training(tmp_path / "a", tokens=120, accum=2, steps=4, seed=3, lora=True)
    second, _ = run_training(tmp_path / "b", tokens=120, accum=2, steps=4, seed=3, lora=True)
    assert first.loss_history == second.loss_history
    assert metrics(tmp_path / "a") == metrics(tmp_path / "b") and len(metrics(tmp_path / "a")) >= 4


def test_different_seed_gives_a_different_data_order_with_the_same_mixture():
    from utils.train.config import TrainingParams
    from utils.train.steps import make_planner

    stores = [random_store("a", 60, 1), random_store("b", 30, 2)]

    def drawn(seed: int) -> list[tuple[int, int]]:
        params = TrainingParams(per_device_train_batch_size=4, gradient_accumulation_steps=2, seed=seed)
        planner = make_planner(stores, [0.7, 0.3], params, world_size=1, max_example_tokens=40)
        return [item for _ in range(10) for b in planner.next_step().bins for item in sorted(b)]

    assert drawn(1) == drawn(1)
    a, b = drawn(1), drawn(2)
    assert a != b
    assert sorted(s for s, _ in a) == sorted(s for s, _ in b)  # each source's share is the same
    assert {s: sum(1 for x, _ in a if x == s) for s in (0, 1)} == {0: 56, 1: 24}

