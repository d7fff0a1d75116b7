"""The run's record (utils/checkpoint/record.py): the checkpoints and final/ summaries written before it was a type
read back through ``from_json`` and write through ``to_json`` byte for byte, so they still resume; a run's
checkpoint holds exactly its record."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.checkpoint.record import RunRecord, SFTRecord, StageRecord, TrainingState

RECORDS = Path(__file__).with_name("records")
"""training_state.json / training_summary.json files written by the stages before the record was typed (the e2e
runs of 01 and 03 on the tiny model: LoRA SFT on two dirs, full SFT, pre-training of a preset, LoRA CPT)."""
LOOP_KEYS = {"step", "tokens_seen", "supervised_seen", "loss_history", "planner", "last_eval", "best_step",
             "best_eval_loss", "total_steps", "world_size"}
"""What ``loop.TrainState.checkpointed`` writes beside the record (``TrainingState``'s own fields)."""
SUMMARY_KEYS = {"stage", "initial_eval", "last_eval", "steps", "tokens_seen", "initial_eval_loss", "best_checkpoint"}
"""What the stages' final/ summaries write beside the record."""
FILES = [("sft_lora_checkpoint.json", SFTRecord, LOOP_KEYS), ("sft_full_checkpoint.json", SFTRecord, LOOP_KEYS),
         ("sft_lora_summary.json", SFTRecord, SUMMARY_KEYS), ("pretrain_checkpoint.json", StageRecord, LOOP_KEYS),
         ("pretrain_summary.json", StageRecord, SUMMARY_KEYS), ("cpt_lora_checkpoint.json", StageRecord, LOOP_KEYS),
         ("synthetic_checkpoint.json", RunRecord, LOOP_KEYS),
         ("pretrain_mix_checkpoint.json", StageRecord, LOOP_KEYS)]


def _dumped(data: dict) -> str:
    return json.dumps(data, indent=2, sort_keys=True) + "\n"  # as checkpoints.py and final_model.py write


@pytest.mark.parametrize("name,kind,others", FILES, ids=[f[0] for f in FILES])
def test_a_record_written_before_the_type_round_trips_byte_for_byte(name, kind, others):
    text = (RECORDS / name).read_text(encoding="utf-8")
    saved = json.loads(text)
    record = kind.from_json(saved)
    assert set(record.keys()) == set(saved) - others  # every key of the run is the record's, none invented
    assert record.to_json() == {k: saved[k] for k in sorted(record.keys())}
    rest = {k: v for k, v in saved.items() if k in others}
    assert _dumped({**rest, **record.to_json()}) == text


@pytest.mark.parametrize("name,kind", [(f[0], f[1]) for f in FILES if f[2] is LOOP_KEYS],
                         ids=[f[0] for f in FILES if f[2] is LOOP_KEYS])
def test_a_training_state_written_before_the_type_round_trips_byte_for_byte(name, kind):
    text = (RECORDS / name).read_text(encoding="utf-8")
    state = TrainingState.from_json(json.loads(text))
    assert set(state.record) == set(kind.from_json(state.record).keys())  # the loop's keys are not the record's
    assert state.step > 0 and state.world_size >= 1 and state.planner
    assert _dumped(state.to_json()) == text


def test_an_unreadable_training_state_is_one_line_naming_the_file(tmp_path):
    from utils.checkpoint.checkpoints import load_training_state
    from utils.common.errors import UserError

    for broken in ("[1, 2]", '{"step": 3}', "{"):
        (tmp_path / "training_state.json").write_text(broken)
        with pytest.raises(UserError, match=rf"^{tmp_path}/training_state.json: unreadable .*pick another checkpoint"):
            load_training_state(tmp_path)


def test_a_preset_records_null_base_and_path_a_synthetic_run_leaves_them_out():
    preset = StageRecord(tokenizer_sha256="t", data_hashes="d", config={}, overrides={}, model_path=None,
                         base_model_sha256=None)
    assert preset.to_json() == {"base_model_sha256": None, "config": {}, "data_hashes": "d", "model_path": None,
                                "overrides": {}, "tokenizer_sha256": "t"}
    assert RunRecord(tokenizer_sha256="t", data_hashes="d").to_json() == {"data_hashes": "d",
                                                                          "tokenizer_sha256": "t"}
    assert StageRecord.from_json({"tokenizer_sha256": "t"}).data_hashes is None  # an older checkpoint: absent


def test_a_runs_checkpoint_holds_its_record(tmp_path):
    from train_helpers import run_training
    from utils.checkpoint.checkpoints import load_training_state

    run_training(tmp_path, steps=2, save_steps=2, batch=4)
    saved = load_training_state(tmp_path / "checkpoint-2")
    record = saved.run_record(RunRecord)
    assert record.tokenizer_sha256 == "none" and record.data_hashes == "synthetic"
    assert record.plan and record.micro_batch_split["factor"] == 1
    assert set(saved.record) == set(record.keys())
    assert set(saved.to_json()) - set(record.keys()) == LOOP_KEYS and saved.step == 2
