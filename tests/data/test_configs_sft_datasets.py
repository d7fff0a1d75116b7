"""Every shipped SFT dataset config validates and loads; the demo and shared ones fit their data."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from paths import ROOT
from utils.common.config import read_json, validate
from utils.data.prepare import load_dataset_config, prepare_corpus

CONFIGS = sorted((ROOT / "config" / "sft_datasets").glob("*.json"))
SHARED_PREFIX = "../shared/data/"


def test_there_are_configs():
    assert {"demo", "demo_transcripts", "demo_hybrid", "alpaca", "dolly", "gpteacher_toolformer", "oasst",
            "sharegpt", "markdown_chats"} <= {p.stem for p in CONFIGS}


@pytest.mark.parametrize("path", CONFIGS, ids=[p.stem for p in CONFIGS])
def test_config_validates_and_loads(path):
    validate(read_json(path), "sft_dataset", path)
    config = load_dataset_config(path)
    assert config.name == path.stem
    for name in _local_paths(path):
        assert name.startswith((SHARED_PREFIX, "data/demo/")), f"{path.name}: {name} is outside the known data"


def _local_paths(path: Path) -> list[str]:
    config = load_dataset_config(path)
    return [n for s in config.datasets if s.type != "huggingface"
            for n in ([s.dataset_name] if s.dataset_name else []) + list(s.directories)]


@pytest.mark.parametrize("path", [p for p in CONFIGS if any(n.startswith(SHARED_PREFIX) for n in _local_paths(p))],
                         ids=lambda p: p.stem)
def test_shared_configs_point_at_existing_data(path, shared_data):
    for name in _local_paths(path):
        assert (ROOT / name).exists(), f"{path.name}: {name} not found"


def test_demo_transcript_markers_cover_the_generated_files():
    participants = ROOT / "data" / "demo" / "transcripts" / "PARTICIPANTS.json"
    if not participants.is_file():
        pytest.skip("data/demo not generated (make demo-data)")
    expected = json.loads(participants.read_text())
    for name in ("demo_transcripts",):
        config = load_dataset_config(ROOT / "config" / "sft_datasets" / f"{name}.json")
        spec = next(s for s in config.datasets if s.type == "markdown_transcripts")
        for info in expected.values():
            for role, markers in info["roles"].items():
                assert set(markers) <= set(getattr(spec.participants, role)), (name, role, markers)


def test_alpaca_config_prepares_the_shared_rows(shared_data, toy_tokenizer_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)  # config paths are relative to the repository root
    manifest = prepare_corpus(load_dataset_config(ROOT / "config" / "sft_datasets" / "alpaca.json"),
                              toy_tokenizer_dir, tmp_path / "alpaca", num_proc=1)
    source = manifest["sources"]["alpaca"]
    assert source["read"] == 100 and source["kept_train"] + source["kept_val"] == 100
    assert manifest["template"]["name"] == "alpaca"
