"""Every shipped config validates; bad configs end in one line naming file and field."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from utils.common.config import load_config, read_json, validate
from utils.common.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FOR_DIR = {"tokenizer": "tokenizer", "pretrain": "pretrain", "sft_datasets": "sft_dataset",
                  "sft_training": "sft_training"}
SHIPPED = sorted(p for d in SCHEMA_FOR_DIR for p in (ROOT / "config" / d).glob("*.json"))


def test_there_are_shipped_configs():
    assert {p.parent.name for p in SHIPPED} >= {"tokenizer", "pretrain"}


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_config_validates(path):
    validate(read_json(path), SCHEMA_FOR_DIR[path.parent.name], path)


@pytest.mark.parametrize("path", sorted((ROOT / "config" / "schemas").glob("*.json")), ids=lambda p: p.name)
def test_schemas_are_valid_and_documented(path):
    import jsonschema

    schema = json.loads(path.read_text())
    jsonschema.validators.validator_for(schema).check_schema(schema)

    def walk(node, where):
        for name, sub in node.get("properties", {}).items():
            assert "description" in sub or "$ref" in sub, f"{path.name}: {where}{name} has no description"
            walk(sub, f"{where}{name}.")
        for name, sub in node.get("$defs", {}).items():
            walk(sub, f"$defs.{name}.")

    walk(schema, "")


def _pretrain_cfg(tmp_path, **training_params):
    base = json.loads((ROOT / "config/pretrain/tiny.json").read_text())
    base["training_params"].update(training_params)
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(base))
    return path


def test_bad_value_names_file_and_field(tmp_path):
    from utils.train.config import PretrainConfig

    path = _pretrain_cfg(tmp_path, learning_rate=-1)
    with pytest.raises(UserError) as err:
        load_config(path, "pretrain", PretrainConfig)
    assert str(err.value) == f"{path}: training_params.learning_rate: -1 is less than the minimum of 0"


def test_unknown_field_and_wrong_type(tmp_path):
    path = _pretrain_cfg(tmp_path, learning_rat=0.1)
    with pytest.raises(UserError, match=r"training_params: Additional properties are not allowed \('learning_rat'"):
        validate(read_json(path), "pretrain", path)
    path = _pretrain_cfg(tmp_path, max_steps="ten")
    with pytest.raises(UserError, match=r"training_params.max_steps: 'ten' is not of type"):
        validate(read_json(path), "pretrain", path)


def test_missing_required_field(tmp_path):
    path = tmp_path / "tok.json"
    path.write_text(json.dumps({"name": "x", "sources": [{"type": "text_files", "paths": ["a"]}]}))
    with pytest.raises(UserError, match=r"tok.json: \(top level\): 'vocab_size' is a required property"):
        validate(read_json(path), "tokenizer", path)


def test_invalid_json_names_line_and_column(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text('{\n  "name": "x",\n  "vocab_size": ,\n}')
    with pytest.raises(UserError, match=r"broken.json:3:17: invalid JSON"):
        read_json(path)


def test_cross_field_check_is_one_line(tmp_path):
    from utils.train.config import PretrainConfig

    path = _pretrain_cfg(tmp_path, micro_batch_tokens=512)  # and per_device_train_batch_size: both set
    with pytest.raises(UserError, match=r"cfg.json: training_params: set exactly one of"):
        load_config(path, "pretrain", PretrainConfig)


@pytest.mark.e2e
def test_cli_bad_config_exits_2_without_traceback(tmp_path):
    path = _pretrain_cfg(tmp_path, learning_rate=-1)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts/01_pretrain.py"), "--config", str(path),
                           "--tokenizer_path", "nowhere"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: {path}: training_params.learning_rate: -1 is less than the minimum of 0"]


@pytest.mark.parametrize("path", sorted((ROOT / "config" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_load(path):
    from accelerate.commands.config.config_args import ClusterConfig

    config = ClusterConfig.from_yaml_file(str(path))
    assert config.num_processes >= 1
