"""load_best_model_at_end: the lowest eval/loss among saved steps becomes the model, survives rotation."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import run_training
from utils.train import loop
from utils.train.config import TrainingParams
from utils.train.run import best_checkpoint

SCRIPTED = {2: 3.0, 4: 1.0, 6: 2.0}  # eval/loss by step: the best is step 4, neither first nor last


@pytest.fixture
def scripted_eval(monkeypatch):
    """Evaluation reports SCRIPTED losses at steps 2, 4, 6 (the one before training is left as it is)."""
    real = loop.evaluate

    def scripted(run):
        step = run.scheduler.last_epoch
        return {**real(run), **({"eval/loss": SCRIPTED[step]} if step else {})}

    monkeypatch.setattr(loop, "evaluate", scripted)


def test_best_checkpoint_becomes_the_model_and_survives_rotation(tmp_path, scripted_eval):
    out = tmp_path / "run"
    state, weights = run_training(out, batch=4, steps=6, save_steps=2, eval_steps=2, save_total_limit=1,
                                  load_best_model_at_end=True)
    assert (state.best_step, state.best_eval_loss) == (4, 1.0)
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4", "checkpoint-6"]
    saved = load_file(str(out / "checkpoint-4" / "model.safetensors"))
    last = load_file(str(out / "checkpoint-6" / "model.safetensors"))
    for name, tensor in saved.items():
        assert torch.equal(weights[name], tensor), name
    assert any(not torch.equal(weights[n], last[n]) for n in saved)
    assert best_checkpoint(state, TrainingParams(**_params())) == {"step": 4, "eval_loss": 1.0, "last_step": 6}


def test_without_the_option_the_last_step_is_the_model(tmp_path, scripted_eval):
    out = tmp_path / "run"
    state, weights = run_training(out, batch=4, steps=6, save_steps=2, eval_steps=2, save_total_limit=1)
    assert state.best_step == 0
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-6"]
    last = load_file(str(out / "checkpoint-6" / "model.safetensors"))
    assert all(torch.equal(weights[n], t) for n, t in last.items())


def _params(**extra):
    return dict(learning_rate=1e-3, max_steps=6, micro_batch_tokens=64, save_steps=2, eval_steps=2,
                load_best_model_at_end=True, bf16=False, **extra)


@pytest.mark.parametrize("eval_steps,save_steps", [(0, 2), (2, 0), (4, 6)])
def test_the_option_needs_saves_at_eval_steps(eval_steps, save_steps):
    with pytest.raises(ValueError, match="load_best_model_at_end needs eval_steps > 0 and save_steps a "
                                         "multiple of eval_steps"):
        TrainingParams(**{**_params(), "eval_steps": eval_steps, "save_steps": save_steps})
