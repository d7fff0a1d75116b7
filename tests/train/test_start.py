"""How a training stage starts: which sharding a launch asks for, and refusals before anything is written."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from accelerate.utils import DistributedType

from paths import ROOT
from reliability_helpers import error_line, script, sft_work, write_json
from utils.common.errors import UserError, run_cli
from utils.train.start import _sharding


def launched(kind: DistributedType, mixed: str = "no", **fsdp):
    """An accelerator as accelerate launch leaves it, with the FSDP plugin a config file makes."""
    plugin = None
    if kind == DistributedType.FSDP:
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(**{"fsdp_version": 2, **fsdp})
    return SimpleNamespace(distributed_type=kind, mixed_precision=mixed, state=SimpleNamespace(fsdp_plugin=plugin))


def fsdp_launch(monkeypatch, mixed: str, *flags: str):
    """The accelerator state `accelerate launch --config_file config/accelerate/fsdp.yaml` gives a trainer that asks
    for ``mixed``, built by accelerate's own code: its launcher turns the shipped config into the environment of
    each rank, the FSDP plugin reads it, and the plugin gets the precision as AcceleratorState gives it on GPUs
    (``set_mixed_precision``; on a CPU the state never reaches that branch)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import FullyShardedDataParallelPlugin
    from accelerate.utils.launch import prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(ROOT / "config" / "accelerate" / "fsdp.yaml"),
                                               "--num_processes", "2", *flags, "scripts/03_sft_industrial.py"])
    for name, value in prepare_multi_gpu_env(_validate_launch_command(args)[0]).items():
        monkeypatch.setenv(name, value)
    plugin = FullyShardedDataParallelPlugin()
    if mixed != "no":
        plugin.set_mixed_precision(mixed)
    return SimpleNamespace(distributed_type=DistributedType.FSDP, mixed_precision=mixed,
                           state=SimpleNamespace(fsdp_plugin=plugin))


@pytest.mark.parametrize("mixed", ["bf16", "no"])
def test_an_fsdp_launch_of_the_shipped_config_starts_with_the_policy_accelerate_derives(monkeypatch, mixed):
    accelerator = fsdp_launch(monkeypatch, mixed)
    assert (accelerator.state.fsdp_plugin.mixed_precision_policy is None) == (mixed == "no")
    assert _sharding(accelerator, "none") == ("fsdp2", "accelerate config (distributed_type FSDP)", True)


def test_an_fsdp_policy_other_than_the_trainers_precision_is_refused(monkeypatch):
    import torch
    from torch.distributed.fsdp import MixedPrecisionPolicy

    accelerator = fsdp_launch(monkeypatch, "bf16")
    accelerator.state.fsdp_plugin.mixed_precision_policy = MixedPrecisionPolicy(param_dtype=torch.float16)
    with pytest.raises(UserError, match=r"accelerate FSDP config: mixed_precision_policy \(training_params.bf16/fp16 "
                                        r"set the precision\) — not applied"):
        _sharding(accelerator, "none")


def test_a_launch_precision_other_than_the_trainers_is_refused(monkeypatch):
    from utils.parallel.accelerator import make_accelerator

    fsdp_launch(monkeypatch, "bf16", "--mixed_precision", "fp16")
    with pytest.raises(UserError) as err:
        make_accelerator("bf16")
    assert str(err.value) == ("accelerate launch asks for mixed_precision 'fp16' (--mixed_precision or the config "
                              "file's mixed_precision), training_params for 'bf16': the trainer takes its precision "
                              "from training_params.bf16/fp16; launch with mixed_precision 'no' or the same")


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
