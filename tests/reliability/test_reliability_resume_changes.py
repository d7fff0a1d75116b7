"""Reliability: resuming with a changed config follows a stated per-field policy, never silence
(utils/train/resume_policy.py, docs/RELIABILITY.md). The learning rate, schedule and max_steps given on
resume apply from the resume step and are announced; the seed, the batch shape and the LoRA settings cannot
change and are refused in one line, the run's files unchanged."""
from __future__ import annotations

import json
import shutil

import pytest

from reliability_helpers import (assert_same_run, error_line, final_weights, metrics, reference_run, sft_argv,
                                 sft_config, sft_in_process, snapshot)


def at_checkpoint_6(work, tmp_path):
    """The reference LoRA run (lr 0.003, 8 steps) as if stopped after checkpoint-6."""
    out = tmp_path / "run"
    shutil.copytree(reference_run(work, "lora"), out)
    shutil.rmtree(out / "checkpoint-8")
    shutil.rmtree(out / "final")
    return out


def test_a_lower_learning_rate_on_resume_applies_from_the_resume_step(work, tmp_path, capsys):
    out = at_checkpoint_6(work, tmp_path)
    config = sft_config(work, "rel_lora_low_lr", learning_rate=0.0003)
    assert sft_in_process(sft_argv(work, config, out, "--resume_from_checkpoint", "auto")) == 0
    printed = capsys.readouterr().out
    assert "resuming from checkpoint-6 (step 6 of 8)" in printed
    assert "changed on resume: learning_rate 0.003 -> 0.0003" in printed
    ref = reference_run(work, "lora")
    lr = {r["step"]: r["lr"] for r in metrics(out) if "lr" in r}
    ref_lr = {r["step"]: r["lr"] for r in metrics(ref) if "lr" in r}
    assert all(lr[s] == ref_lr[s] for s in range(1, 7))
    assert all(lr[s] == pytest.approx(ref_lr[s] / 10, rel=1e-9) for s in (7, 8))
    a, b = final_weights(out), final_weights(ref)
    assert any(not a[k].equal(b[k]) for k in a), "the new learning rate changed nothing"


def test_an_auto_switch_that_resolves_otherwise_on_the_resuming_machine_is_announced(work, tmp_path, capsys,
                                                                                      monkeypatch):
    """The reference run trained in fp32 (bf16 false, attention_fp32 auto: off). Resumed with bf16 auto on a CPU
    with bf16 matmul, both switches resolve on: applied from the resume step, announced with the reason, and
    recorded in the new checkpoints."""
    import utils.parallel.accelerator as accelerator

    monkeypatch.setattr(accelerator, "cpu_flags", lambda: ["avx2", "avx512_bf16"])
    out = at_checkpoint_6(work, tmp_path)
    config = sft_config(work, "rel_lora_auto_bf16", bf16="auto")
    assert sft_in_process(sft_argv(work, config, out, "--resume_from_checkpoint", "auto")) == 0
    printed = capsys.readouterr().out
    assert ("changed on resume: bf16 False -> True (auto: this CPU has avx512_bf16), attention_fp32 False -> True "
            "(auto: bf16 on the CPU, where float32 attention kernels are faster)") in printed
    saved = json.loads((out / "checkpoint-8" / "training_state.json").read_text())
    assert saved["config"]["training_params"]["bf16"] is True
    assert saved["resolved_auto"]["bf16"] == {"value": True, "why": "this CPU has avx512_bf16"}
    assert saved["plan"]["precision"] == {"value": "bf16", "from": "training_params.bf16 auto: on, this CPU has "
                                                                   "avx512_bf16"}


def test_max_steps_on_resume_extends_the_run_or_is_refused_below_the_checkpoint(work, tmp_path, capsys):
    out = at_checkpoint_6(work, tmp_path)
    config = sft_config(work, "rel_lora")
    before = snapshot(out)
    assert sft_in_process(sft_argv(work, config, out, "--resume_from_checkpoint", "auto", "--max_steps", "4")) == 2
    line = error_line(capsys)
    assert "max_steps" in line and "4 total steps is below the checkpoint's step 6" in line
    assert snapshot(out) == before
    assert sft_in_process(sft_argv(work, config, out, "--resume_from_checkpoint", "auto", "--max_steps", "10")) == 0
    printed = capsys.readouterr().out
    assert "resuming from checkpoint-6 (step 6 of 10)" in printed and "changed on resume: max_steps 8 -> 10" in printed
    assert max(r["step"] for r in metrics(out)) == 10


@pytest.mark.parametrize("change, message", [
    ({"extra": ("--seed", "8")}, "training_params.seed is 7 in the checkpoint and 8 now; it cannot change on resume"),
    ({"params": {"micro_batch_tokens": 512}}, "training_params.micro_batch_tokens is 256 in the checkpoint and 512"),
    ({"params": {"gradient_accumulation_steps": 2}},
     "gradient_accumulation_steps x processes is 1 in the checkpoint and 2 now"),
    ({"lora_alpha": 16}, "lora_config differs from the checkpoint's"),
])
def test_what_cannot_change_on_resume_is_refused_naming_the_field(work, tmp_path, capsys, change, message):
    out = at_checkpoint_6(work, tmp_path)
    config = sft_config(work, "rel_lora_changed", **change.get("params", {}))
    if "lora_alpha" in change:
        import json

        data = json.loads(config.read_text())
        data["lora_config"]["lora_alpha"] = change["lora_alpha"]
        config.write_text(json.dumps(data))
    before = snapshot(out)
    argv = sft_argv(work, config, out, "--resume_from_checkpoint", "auto", *change.get("extra", ()))
    assert sft_in_process(argv) == 2
    line = error_line(capsys)
    assert message in line and "checkpoint-6" in line, line
    assert snapshot(out) == before


def test_data_dirs_given_in_another_order_are_matched_by_name(work, tmp_path, capsys):
    """The reference run took --data_dirs instruct chat with weights 0.7 0.3; resumed with both lists swapped
    it ends bit-identical."""
    out = at_checkpoint_6(work, tmp_path)
    argv = sft_argv(work, sft_config(work, "rel_lora"), out, "--resume_from_checkpoint", "auto",
                    data=("chat", "instruct"), weights=("0.3", "0.7"))
    assert sft_in_process(argv) == 0
    assert "--data_dirs: matched to the checkpoint's sources by name (instruct, chat)" in capsys.readouterr().out
    assert_same_run(reference_run(work, "lora"), out)


@pytest.mark.parametrize("written_before_shares", [False, True])
def test_changed_data_weights_apply_from_the_resume_step_without_a_catch_up_burst(work, tmp_path, capsys,
                                                                                  written_before_shares):
    """Weights 0.7/0.3 until checkpoint-6, then --data_weights 0.2 0.8 for 6 more steps: the draws after the
    resume follow 0.2/0.8 within one example at every step (before, the mixture was tracked from step 0, so
    the under-drawn source was drawn alone until it had caught up), each source's order continues where it
    stopped, and the change is announced. A later resume with the same new weights announces nothing.
    ``written_before_shares``: checkpoint-6 as written before the sampler recorded its shares (and before
    checksums.json): the run's saved data_weights stand in for them."""
    import json

    from reliability_helpers import newest_state

    out = at_checkpoint_6(work, tmp_path)
    if written_before_shares:
        state_file = out / "checkpoint-6" / "training_state.json"
        state = json.loads(state_file.read_text())
        del state["planner"]["sampler"]["shares"]
        state_file.write_text(json.dumps(state))
        (out / "checkpoint-6" / "checksums.json").unlink()
    before = json.loads((out / "checkpoint-6" / "training_state.json").read_text())["planner"]["sampler"]
    config = sft_config(work, "rel_lora_reweighted", max_steps=12, save_steps=1, save_total_limit=10)
    assert sft_in_process(sft_argv(work, config, out, "--resume_from_checkpoint", "auto",
                                   weights=("0.2", "0.8"))) == 0
    printed = capsys.readouterr().out
    assert "changed on resume: data_weights instruct 0.7 -> 0.2, chat 0.3 -> 0.8" in printed
    assert "applied from step 7" in printed
    for step in range(7, 13):
        sampler = json.loads((out / f"checkpoint-{step}" / "training_state.json").read_text())["planner"]["sampler"]
        since = [a - b for a, b in zip(sampler["drawn"], before["drawn"])]
        assert abs(since[0] - 0.2 * sum(since)) <= 1, (step, since)
        assert sampler["shares"] == pytest.approx([0.2, 0.8]) and sampler["base"] == before["drawn"]
    assert newest_state(out)["step"] == 12
    shutil.rmtree(out / "checkpoint-12")
    shutil.rmtree(out / "final")
    assert sft_in_process(sft_argv(work, config, out, "--resume_from_checkpoint", "auto",
                                   weights=("0.2", "0.8"))) == 0
    assert "changed on resume" not in capsys.readouterr().out
