"""training_params.compile: 20 steps with every decoder layer compiled give the eager losses and weights within
float tolerance; packed rows of a new length every micro-batch recompile a bounded number of times (none after
the first steps), and the only graph breaks are the eager packed attention, one per layer call."""
from __future__ import annotations

import pytest
import torch

import utils.train.loop as loop
from train_helpers import run_training
from utils.model.compiled import CompileStats

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_compiled_layers_train_as_eager_with_bounded_recompiles(tmp_path, monkeypatch, capsys):
    torch._dynamo.reset()
    eager_state, eager_weights = run_training(tmp_path / "eager", tokens=128, accum=2, steps=20, logging_steps=5)
    frames = []
    real_step = loop.train_step

    def step(run, batches, packed=None):
        out = real_step(run, batches, packed)
        frames.append(CompileStats.now().frames)
        return out

    monkeypatch.setattr(loop, "train_step", step)
    before = CompileStats.now()
    state, weights = run_training(tmp_path / "compiled", tokens=128, accum=2, steps=20, logging_steps=5, compile=True)
    stats = CompileStats.now().since(before)
    assert state.loss_history == pytest.approx(eager_state.loss_history, rel=1e-5)
    assert all(torch.allclose(weights[k], eager_weights[k], atol=1e-5) for k in weights)
    assert frames[3:] == [frames[3]] * len(frames[3:]), f"recompiled after step 4: {frames}"
    assert 0 < stats.graphs <= 16 and stats.frames <= 16, stats.describe()
    assert set(stats.breaks) == {next(iter(stats.breaks))} and "torch.compiler.disable" in next(iter(stats.breaks))
    printed = capsys.readouterr().out
    assert f"torch.compile: {stats.describe()}" in printed


def test_a_model_without_decoder_layers_is_refused_for_compile():
    from utils.common.errors import UserError
    from utils.model.compiled import compile_layers

    with pytest.raises(UserError, match="training_params.compile: found no decoder layers to compile"):
        compile_layers([])
