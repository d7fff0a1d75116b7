"""Folding gradient accumulation into larger micro-batches (training_params.fold_micro_batches): the factor the free
memory allows, the same training as the larger micro-batch configured, and the split a resume keeps."""
import json

import pytest
import torch

import utils.train.fold as fold
from train_helpers import run_training, tiny_llama
from utils.checkpoint.record import TrainingState
from utils.common.errors import UserError
from utils.train.config import TrainingParams

CPU = torch.device("cpu")


def _params(**settings) -> TrainingParams:
    return TrainingParams(**{"micro_batch_tokens": 256, "gradient_accumulation_steps": 8, "bf16": False,
                             "fold_micro_batches": True, **settings})


def _free_for(monkeypatch, model, params, tokens: int) -> None:
    """The free memory that leaves room for ``tokens`` tokens per micro-batch by the estimate."""
    per_token = fold.bytes_per_token(model.config, 2 if params.bf16 else 4, params.gradient_checkpointing)
    free = fold.state_bytes(model, CPU, 1) + int(tokens * per_token / fold.MEMORY_SHARE) + per_token
    monkeypatch.setattr(fold, "free_memory", lambda device: free)


@pytest.mark.parametrize("accum,room,factor", [(8, 1024, 4), (6, 1024, 3), (8, 200, 1), (8, 10 ** 6, 8)])
def test_the_factor_is_the_largest_divisor_of_the_accumulation_the_memory_holds(monkeypatch, accum, room, factor):
    model, params = tiny_llama(), _params(gradient_accumulation_steps=accum)
    _free_for(monkeypatch, model, params, room)
    split = fold.choose_split(params, model, CPU, 1, 1, None, on_cuda_path=False)
    assert (split.factor, split.micro_batch_tokens, split.gradient_accumulation_steps) == (
        factor, 256 * factor, accum // factor)
    assert (split.params.micro_batch_tokens, split.params.gradient_accumulation_steps) == (256 * factor, accum // factor)
    assert (params.micro_batch_tokens, params.gradient_accumulation_steps) == (256, accum)  # the config is kept
    assert f"{factor} configured micro-batches of 256 per device pass" in split.why and "(estimate)" in split.why
    assert fold.choose_split(params, model, CPU, 2, 1, None, False).record == {
        "micro_batch_tokens": 256 * factor, "micro_batches_per_step": 2 * accum // factor, "factor": factor}


def test_auto_folds_on_the_cuda_path_only(monkeypatch):
    model, params = tiny_llama(), _params(fold_micro_batches="auto")
    _free_for(monkeypatch, model, params, 2048)
    cpu = fold.choose_split(params, model, CPU, 1, 1, None, on_cuda_path=False)
    assert (cpu.factor, cpu.micro_batch_tokens, cpu.why) == (
        1, 256, "training_params.fold_micro_batches (auto: off on the CPU)")
    assert fold.choose_split(params, model, CPU, 1, 1, None, on_cuda_path=True).factor == 8
    off = fold.choose_split(_params(fold_micro_batches=False), model, CPU, 1, 1, None, on_cuda_path=True)
    assert off.factor == 1 and off.why == "training_params.fold_micro_batches"


def test_what_cannot_fold_says_why(monkeypatch):
    model = tiny_llama()
    _free_for(monkeypatch, model, _params(), 10 ** 6)
    single = fold.choose_split(_params(gradient_accumulation_steps=1), model, CPU, 1, 1, None, True)
    assert single.factor == 1 and "nothing to fold at gradient_accumulation_steps 1" in single.why
    examples = fold.choose_split(_params(micro_batch_tokens=None, per_device_train_batch_size=4), model, CPU, 1, 1,
                                 None, True)
    assert examples.factor == 1 and examples.micro_batch_tokens is None and "needs micro_batch_tokens" in examples.why


def checkpointed(record: dict) -> TrainingState:
    """A checkpoint's training state at step 3 holding ``record``."""
    return TrainingState(step=3, tokens_seen=0, supervised_seen=0, loss_history=[], planner={}, record=record)


def test_a_resume_keeps_the_checkpoints_split_or_refuses_in_one_line(monkeypatch):
    model, params = tiny_llama(), _params()
    _free_for(monkeypatch, model, params, 10 ** 6)  # room for all 8: the checkpoint's split wins anyway
    saved = checkpointed({"micro_batch_split": {"micro_batch_tokens": 1024, "micro_batches_per_step": 4, "factor": 2}})
    kept = fold.choose_split(params, model, CPU, 2, 1, saved, True)
    assert (kept.micro_batch_tokens, kept.gradient_accumulation_steps) == (1024, 2) and "kept" in kept.why
    old = fold.choose_split(params, model, CPU, 1, 1, checkpointed({}), True)  # a checkpoint from before the split was recorded
    assert (old.factor, old.micro_batch_tokens) == (1, 256) and "records no folded split" in old.why
    unfolded = checkpointed({"micro_batch_split": {"micro_batch_tokens": 256, "micro_batches_per_step": 8,
                                                   "factor": 1}})
    assert fold.choose_split(params, model, CPU, 1, 1, unfolded, True).factor == 1  # not folded now either
    with pytest.raises(UserError) as refused:
        fold.choose_split(params, model, CPU, 3, 1, saved, True)
    assert str(refused.value) == (
        "the checkpoint's steps were drawn as 4 micro-batch(es) of 1024 tokens (training_params.fold_micro_batches); "
        "3 processes cannot share them — resume on a number of processes dividing 4, or start a new --output_dir")


def test_gradient_checkpointing_and_bf16_let_more_tokens_fit():
    config = tiny_llama().config
    plain = fold.bytes_per_token(config, 4, False)
    assert fold.bytes_per_token(config, 2, False) < plain and fold.bytes_per_token(config, 4, True) < plain


def _room(monkeypatch, tokens: int) -> None:
    real = fold.choose_split

    def choose(params, model, *args, **kwargs):
        _free_for(monkeypatch, model, params, tokens)
        return real(params, model, *args, **kwargs)

    monkeypatch.setattr("utils.train.run.choose_split", choose)


def test_a_folded_run_trains_as_the_larger_micro_batch_configured(tmp_path, monkeypatch):
    _room(monkeypatch, 240)
    folded, weights_folded = run_training(tmp_path / "folded", tokens=60, accum=4, steps=3, fold_micro_batches=True)
    plain, weights_plain = run_training(tmp_path / "plain", tokens=240, accum=1, steps=3, fold_micro_batches=False)
    assert folded.loss_history == plain.loss_history and folded.tokens_seen == plain.tokens_seen
    assert all(weights_folded[k].equal(weights_plain[k]) for k in weights_plain)
    unfolded, _ = run_training(tmp_path / "unfolded", tokens=60, accum=4, steps=3, fold_micro_batches=False)
    assert unfolded.loss_history != folded.loss_history  # four 60-token bins pack other examples than one of 240


def test_a_folded_run_resumes_bit_identically_with_less_memory_free(tmp_path, monkeypatch):
    _room(monkeypatch, 240)
    full, weights_full = run_training(tmp_path / "full", tokens=60, accum=4, steps=4, fold_micro_batches=True)
    run_training(tmp_path / "cut", tokens=60, accum=4, steps=4, save_steps=2, fold_micro_batches=True)
    saved = json.loads((tmp_path / "cut" / "checkpoint-2" / "training_state.json").read_text())
    assert saved["micro_batch_split"] == {"micro_batch_tokens": 240, "micro_batches_per_step": 1, "factor": 4}
    _room(monkeypatch, 60)  # now only the configured micro-batch would fit: the checkpoint's split is kept
    resumed, weights_resumed = run_training(tmp_path / "cut", tokens=60, accum=4, steps=4, fold_micro_batches=True,
                                            resume=tmp_path / "cut" / "checkpoint-2")
    assert resumed.loss_history == full.loss_history
    assert all(weights_full[k].equal(weights_resumed[k]) for k in weights_full)


def test_the_emulated_cuda_path_folds_by_default_and_the_plan_and_checkpoint_say_so(tmp_path_factory,
                                                                                   toy_tokenizer_dir, tmp_path,
                                                                                   monkeypatch, capsys):
    from reliability_helpers import sft_argv, sft_config, sft_in_process, sft_work
    from train_helpers import emulate_cuda_kernels

    work = sft_work(tmp_path_factory, toy_tokenizer_dir)
    emulate_cuda_kernels(monkeypatch, "1")
    _room(monkeypatch, 512)
    out = tmp_path / "run"
    config = sft_config(work, "fold_auto", gradient_accumulation_steps=4, max_steps=2)
    assert sft_in_process(sft_argv(work, config, out)) == 0, capsys.readouterr().err[-2000:]
    plan = capsys.readouterr().out
    assert "fold_micro_batches: 2 configured micro-batches of 256 per device pass" in plan
    assert "micro-batch tokens" in plan and "512" in next(l for l in plan.splitlines() if "micro-batch tokens" in l)
    saved = json.loads((out / "checkpoint-2" / "training_state.json").read_text())
    assert saved["micro_batch_split"] == {"micro_batch_tokens": 512, "micro_batches_per_step": 2, "factor": 2}
    assert saved["config"]["training_params"]["micro_batch_tokens"] == 256  # the config as given
