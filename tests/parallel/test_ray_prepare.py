"""Both prepare stages on Ray (--executor ray): on a local instance of two CPUs (started once for the module),
the shards are byte-identical to the local executor's; dedup and the weighted mixture are exact."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from utils.data.executors import RayExecutor
from utils.data.prepare import load_dataset_config, prepare_corpus
from utils.data.text_corpus import TextCorpusSpec, prepare_text_corpus
from utils.data.text_sources import TextSource

pytest.importorskip("ray")


@pytest.fixture(scope="module")
def ray_executor():
    """One local Ray instance (ray.init(num_cpus=2), two workers) shared by the module: a start costs seconds."""
    executor = RayExecutor(2)
    yield executor
    executor.close()


def files(path: Path, pattern: str) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.glob(pattern))}


def test_text_shards_on_ray_are_the_local_executors(ray_executor, toy_tokenizer_dir, tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(10):
        (docs / f"{i}.txt").write_text(f"Text {i} says {i * 3} things. " * (30 + 10 * i))
    rows = "".join(json.dumps({"text": f"row {i} holds {i * i}"}) + "\n" for i in range(400))
    (tmp_path / "rows.jsonl").write_text(rows)
    spec = TextCorpusSpec("t", [TextSource(type="text_files", paths=[str(docs)]),
                                TextSource(type="jsonl", paths=[str(tmp_path / "rows.jsonl")])], 0.1)
    from utils.data.executors import LocalExecutor

    local = prepare_text_corpus(spec, toy_tokenizer_dir, tmp_path / "local", LocalExecutor(1), partition_mb=0.004)
    assert ray_executor.describe() == "ray (local instance, 2 CPUs)"
    remote = prepare_text_corpus(spec, toy_tokenizer_dir, tmp_path / "ray", ray_executor, partition_mb=0.004)
    assert local["splits"]["train"]["num_shards"] > 3
    assert files(tmp_path / "ray", "*.bin") == files(tmp_path / "local", "*.bin")
    assert remote["splits"] == local["splits"] and remote["sources"] == local["sources"]
    assert (tmp_path / "ray" / "DATA_CARD.md").read_bytes() == (tmp_path / "local" / "DATA_CARD.md").read_bytes()
    state = json.loads((tmp_path / "ray" / "training_state.json").read_text())
    assert state["executor"] == "ray (local instance, 2 CPUs)"


def sft_config(tmp_path: Path) -> Path:
    """Two sources with duplicates inside and across them, weighted 1.7 and 0.4 (fractional repeats)."""
    chat = [{"messages": [{"role": "user", "content": f"Question {i % 70}?"},
                          {"role": "assistant", "content": f"Answer {i % 70} is {i % 70 * 2}."}]} for i in range(90)]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat))
    (tmp_path / "b.jsonl").write_text("".join(json.dumps(r) + "\n" for r in chat[60:] + [
        {"messages": [{"role": "user", "content": f"Other {i}?"}, {"role": "assistant", "content": f"Yes {i}."}]}
        for i in range(50)]))
    config = {"name": "mix", "template": "chatml", "seed": 3,
              "output_params": {"sequence_length": 64, "shard_size": 16, "train_ratio": 0.85},
              "quality_filters": {"dedupe": True},
              "datasets": [{"name": "a", "type": "jsonl", "dataset_name": str(tmp_path / "a.jsonl"), "weight": 1.7},
                           {"name": "b", "type": "jsonl", "dataset_name": str(tmp_path / "b.jsonl"), "weight": 0.4}]}
    (tmp_path / "mix.json").write_text(json.dumps(config))
    return tmp_path / "mix.json"


def test_sft_shards_on_ray_are_the_local_executors_with_exact_dedup_and_mixture(ray_executor, toy_tokenizer_dir,
                                                                                 tmp_path):
    config = load_dataset_config(sft_config(tmp_path))
    local = prepare_corpus(config, toy_tokenizer_dir, tmp_path / "local", num_proc=1)
    remote = prepare_corpus(config, toy_tokenizer_dir, tmp_path / "ray", num_proc=2, executor=ray_executor)
    assert files(tmp_path / "ray", "*.jsonl") == files(tmp_path / "local", "*.jsonl")
    assert remote["splits"] == local["splits"] and remote["sources"] == local["sources"]
    a, b = remote["sources"]["a"], remote["sources"]["b"]
    assert a["dropped_by_reason"]["duplicate"] == 20 and b["dropped_by_reason"]["duplicate"] == 30
    assert a["written_train"] > a["kept_train"] and b["written_train"] < b["kept_train"]
