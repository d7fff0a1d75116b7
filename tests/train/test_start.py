"""How a training stage starts: which sharding a launch asks for, and refusals before anything is written."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

from reliability_helpers import error_line, script, sft_work, write_json
from utils.common.errors import UserError, run_cli
from utils.train.start import _sharding


def launched(kind: DistributedType, **fsdp):
    """An accelerator as accelerate launch leaves it, with the FSDP plugin a config file makes."""
    plugin = None
    if kind == DistributedType.FSDP:
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(**{"fsdp_version": 2, **fsdp})
    return SimpleNamespace(distributed_type=kind, state=SimpleNamespace(fsdp_plugin=plugin))


def test_sharding_follows_the_flag_or_an_fsdp_launch_and_deepspeed_is_refused(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert _sharding(launched(DistributedType.NO), "none") == ("none", "--sharding", True)
    assert _sharding(launched(DistributedType.MULTI_CPU), "fsdp2") == ("fsdp2", "--sharding", True)
    assert _sharding(launched(DistributedType.FSDP), "none") == (
        "fsdp2", "accelerate config (distributed_type FSDP)", True)
    assert _sharding(launched(DistributedType.FSDP, reshard_after_forward=False), "none")[2] is False
    with pytest.raises(UserError, match="DeepSpeed is not supported by this trainer; for sharded training launch "
                                        "with --config_file config/accelerate/fsdp.yaml"):
        _sharding(launched(DistributedType.DEEPSPEED), "none")


@pytest.mark.parametrize(("setting", "named"), [({"activation_checkpointing": True}, "fsdp_activation_checkpointing"),
                                                ({"fsdp_version": 1}, "fsdp_version")])
def test_fsdp_plugin_settings_this_trainer_does_not_apply_are_refused(monkeypatch, setting, named):
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    with pytest.raises(UserError, match=f"accelerate FSDP config: {named}"):
        _sharding(launched(DistributedType.FSDP, **setting), "none")


def test_a_model_without_decoder_layers_is_refused_for_sharding():
    import torch

    from utils.parallel.fsdp import shard

    with pytest.raises(UserError, match="--sharding fsdp2: found no decoder layers"):
        shard(torch.nn.Sequential(torch.nn.Linear(2, 2)), torch.device("cpu"))


def test_sharded_cpt_with_lora_is_refused_before_anything_is_written(tmp_path_factory, toy_tokenizer_dir, tmp_path,
                                                                   capsys):
    work = sft_work(tmp_path_factory, toy_tokenizer_dir)
    (tmp_path / "text.txt").write_text("Some text to continue pre-training on. " * 200)
    config = write_json(tmp_path / "cpt.json", {
        "name": "cpt", "lora_config": {"r": 4, "lora_alpha": 8},
        "data": {"sources": [{"type": "text_files", "paths": [str(tmp_path / "text.txt")]}], "sequence_length": 32},
        "training_params": {"max_steps": 2, "per_device_train_batch_size": 2, "bf16": False}})
    out = tmp_path / "out"
    code = run_cli(script("01_pretrain").main, ["--config", str(config), "--tokenizer_path", str(work / "tokenizer"),
                                                "--model_path", str(work / "model"), "--output_dir", str(out),
                                                "--sharding", "fsdp2"])
    assert code == 2
    assert error_line(capsys).startswith(f"error: {config}: lora_config with --sharding fsdp2: pre-training merges")
    assert not out.exists() and json.loads(config.read_text())["name"] == "cpt"
