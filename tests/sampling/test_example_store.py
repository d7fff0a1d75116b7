"""The example store: the shard cache is written streaming and equals the examples; per-block counts."""
from __future__ import annotations

import json

import numpy as np

from utils.common.labels import IGNORE
from utils.sampling import example_store
from utils.sampling.example_store import load_sft_store


def _prepared(tmp_path, shards):
    entries = []
    for k, examples in enumerate(shards):
        name = f"train_{k:05d}.jsonl"
        (tmp_path / name).write_text("".join(json.dumps({"input_ids": ids, "labels": labels, "source": source}) + "\n"
                                             for ids, labels, source in examples))
        entries.append({"file": name, "sha256": f"hash{k}", "conversations": len(examples)})
    return {"splits": {"train": {"shards": entries}}}


def test_the_streamed_cache_holds_every_example_and_counts_targets_in_blocks(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    examples = []
    for i in range(23):
        ids = rng.integers(0, 50, rng.integers(1, 9)).tolist()
        labels = [t if rng.random() < 0.6 else IGNORE for t in ids]
        examples.append((ids, labels, "a" if i % 3 else "b"))
    manifest = _prepared(tmp_path, [examples[:10], examples[10:]])
    monkeypatch.setattr(example_store, "TARGET_BLOCK", 4)  # several blocks, the last one partial
    store = load_sft_store(tmp_path, "train", manifest)
    assert len(store) == 23 and store.source_names == ("b", "a")
    for i, (ids, labels, source) in enumerate(examples):
        tokens, labs = store.get(i)
        assert tokens.tolist() == ids and labs.tolist() == labels
        assert store.source_names[store.source_ids[i]] == source
        assert store.supervised_targets[i] == sum(label != IGNORE for label in labels[1:])
    again = load_sft_store(tmp_path, "train", manifest)  # read back from the cache
    assert np.array_equal(again.tokens, store.tokens) and np.array_equal(again.offsets, store.offsets)
    assert store.targets is not None  # counted while the cache was written: loading touches no labels
    counted = example_store.ExampleStore("x", store.tokens, store.labels, store.offsets)
    assert counted.supervised_targets.tolist() == store.supervised_targets.tolist()  # blocks of 4
    assert not list((tmp_path / ".cache").glob("*.tmp*"))


def test_an_empty_split_gives_an_empty_store(tmp_path):
    store = load_sft_store(tmp_path, "train", _prepared(tmp_path, [[]]))
    assert len(store) == 0 and store.supervised_targets.tolist() == []
