"""The step profile: every op's time lands in one group, and the groups add up to the step's wall time."""
from __future__ import annotations

import pytest

from train_helpers import synthetic_stage
from utils.bench.profile import GROUPS, group_of, profile_step


class _Event:
    def __init__(self, name, parent=None):
        self.name, self.cpu_parent = name, parent


def test_ops_are_grouped_by_name_and_ancestors():
    step = _Event("optimizer_step")
    to_copy = _Event("aten::_to_copy", _Event("aten::to"))
    sdpa = _Event("aten::scaled_dot_product_attention")
    assert group_of(_Event("aten::mm", _Event("aten::linear"))) == "matmul"
    assert group_of(_Event("aten::copy_", to_copy)) == "cast"
    assert group_of(_Event("aten::copy_", _Event("aten::clone"))) == "elementwise"
    assert group_of(_Event("aten::fill_", sdpa)) == "attention"
    assert group_of(_Event("aten::fill_", _Event("aten::zero_", _Event("aten::nll_loss_backward")))) == "loss"
    assert group_of(_Event("aten::mul_", _Event("aten::_foreach_mul_", step))) == "optimizer"
    assert group_of(_Event("forward_backward")) is None


@pytest.mark.parametrize("bf16", [False, True], ids=["fp32", "bf16"])
def test_profile_of_a_step_adds_up(tmp_path, bf16):
    from utils.train.recipe import build

    stage = synthetic_stage(tmp_path, steps=3, batch=4, accum=2, bf16=bf16)
    run = build(stage, stage.start()).run
    result = profile_step(run, warmup=1, steps=2)
    assert set(result.seconds) <= set(GROUPS)
    for group in ("matmul", "attention", "loss", "optimizer", "elementwise"):
        assert result.seconds[group] > 0, group
    if bf16:  # autocast casts weights and activations to bf16 in every micro-batch
        assert result.seconds["cast"] > 0
    assert sum(result.seconds.values()) == pytest.approx(result.wall_s, rel=1e-6)
    assert result.micro_batches == 2 and sum(result.syncs.values()) == 0, result.syncs_line()
    table = result.table()
    assert table.count("\n") == len(GROUPS) + 2 and "matmuls" in table


@pytest.mark.parametrize("argv,message", [
    (["--steps", "0"], "--warmup 2 --steps 0: give 0 or more warm-up steps and at least 1 step"),
    (["--params", "[1]"], "--params: give a JSON object of training_params"),
])
def test_profile_script_refuses_bad_values_in_one_line(argv, message, capsys):
    from reliability_helpers import error_line, script
    from utils.common.errors import run_cli

    assert run_cli(script("profile_train_step").main, argv) == 2
    assert message in error_line(capsys, alone=True)
