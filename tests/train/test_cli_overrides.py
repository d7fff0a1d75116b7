"""Every command-line change to a training config goes through ``load_with_overrides``: the config it returns has
them all, the list names each with its flag, and nothing changes the config afterwards (it is frozen)."""
from __future__ import annotations

import argparse
import dataclasses
import json

import pytest

from utils.common.errors import UserError
from utils.train.cli import add_run_args, load_with_overrides
from utils.train.config import PretrainConfig, SFTTrainingConfig

SFT = {"name": "t", "training_params": {"micro_batch_tokens": 256, "max_steps": 8, "seed": 7, "bf16": False},
       "evaluation_config": {"eval_prompts": ["a?"]}, "lora_config": {"r": 4}}


def _args(config, *argv, eval_prompts: bool = True):
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    if eval_prompts:
        parser.add_argument("--eval_prompts")
    add_run_args(parser)
    return parser.parse_args(["--config", str(config), *argv])


def _write(path, data):
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_every_flag_is_applied_and_listed(tmp_path):
    config = _write(tmp_path / "sft.json", SFT)
    prompts = _write(tmp_path / "prompts.json", {"eval_prompts": ["b?", "c?"]})
    cfg, applied = load_with_overrides(_args(config, "--set", "lora_config.r=2", "--max_steps", "3", "--seed", "5",
                                             "--eval_prompts", str(prompts)), "sft_training", SFTTrainingConfig)
    assert (cfg.training_params.max_steps, cfg.training_params.seed, cfg.lora_config.r) == (3, 5, 2)
    assert cfg.evaluation_config.eval_prompts == ["b?", "c?"]
    assert applied == {"lora_config.r": "--set lora_config.r=2", "max_steps": "--max_steps", "seed": "--seed",
                       "evaluation_config.eval_prompts": f"--eval_prompts {prompts}"}


def test_no_flags_is_the_file(tmp_path):
    config = _write(tmp_path / "sft.json", SFT)
    cfg, applied = load_with_overrides(_args(config), "sft_training", SFTTrainingConfig)
    assert applied == {}
    assert (cfg.training_params.max_steps, cfg.training_params.seed) == (8, 7)
    assert cfg.evaluation_config.eval_prompts == ["a?"]


def test_a_script_without_eval_prompts_is_served(tmp_path):
    pretrain = {"name": "p", "data": {"sources": [{"type": "text_files", "paths": ["a"]}]},
                "training_params": {"per_device_train_batch_size": 2, "bf16": False}}
    config = _write(tmp_path / "pre.json", pretrain)
    cfg, applied = load_with_overrides(_args(config, "--max_steps", "4", eval_prompts=False), "pretrain",
                                       PretrainConfig)
    assert cfg.training_params.max_steps == 4 and applied == {"max_steps": "--max_steps"}


def test_a_bad_set_names_the_file_and_field(tmp_path):
    config = _write(tmp_path / "sft.json", SFT)
    with pytest.raises(UserError, match=r"sft.json with --set: training_params.max_steps: 0 is less than"):
        load_with_overrides(_args(config, "--set", "training_params.max_steps=0"), "sft_training", SFTTrainingConfig)


def test_the_loaded_config_is_frozen(tmp_path):
    cfg, _ = load_with_overrides(_args(_write(tmp_path / "sft.json", SFT)), "sft_training", SFTTrainingConfig)
    for obj, name, value in ((cfg, "lora_config", None), (cfg.training_params, "max_steps", 1),
                             (cfg.lora_config, "r", 1), (cfg.evaluation_config, "eval_prompts", []),
                             (cfg.evaluation_config.generation_config, "max_new_tokens", 1)):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(obj, name, value)
