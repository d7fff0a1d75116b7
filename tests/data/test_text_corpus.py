"""The raw-text prepare stage (utils/data/text_corpus.py): partitions, shards byte-identical for 1 and 2
processes, the same token stream as the launch's tokenization, and the reader's checks."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from utils.common.errors import UserError
from paths import ROOT
from utils.data.executors import RAY_MISSING, LocalExecutor, make_executor
from utils.data.pretrain_data import PretrainData, build_streams
from utils.data.text_corpus import TextCorpusSpec, load_text_corpus, prepare_text_corpus
from utils.data.text_sources import TextSource, iter_documents, partitions, read_partition
from utils.data.fingerprint import tokenizer_fingerprint
from utils.data.tokenizer import load_tokenizer

PARTITION_MB = 4096 / 2**20
"""4 KB of input per task: the toy corpus cuts into a dozen partitions, a JSON-lines file into byte ranges."""
VOLATILE = {"created_at"}
"""Manifest fields that say when, not what."""


def make_sources(root: Path) -> list[TextSource]:
    """Text files in a directory, one JSON-lines file larger than a partition, and a capped source."""
    docs = root / "docs"
    docs.mkdir(parents=True)
    for i in range(9):
        (docs / f"doc_{i}.txt").write_text(f"Document {i} talks about topic {i * 7}. " * (20 + 15 * i))
    (docs / "empty.txt").write_text("   \n")
    with open(root / "rows.jsonl", "w", encoding="utf-8") as handle:
        for i in range(300):
            handle.write(json.dumps({"text": f"Row {i}: the value is {i * i}, twice that is {2 * i * i}.",
                                     "meta": {"note": f"note {i} <|endoftext|>"}}) + "\n")
            if i % 50 == 7:
                handle.write("{not json\n")
    return [TextSource(type="text_files", name="docs", paths=[str(docs)]),
            TextSource(type="jsonl", name="rows", paths=[str(root / "rows.jsonl")], fields=["text", "meta.note"]),
            TextSource(type="jsonl", name="capped", paths=[str(root / "rows.jsonl")], max_documents=40)]


@pytest.fixture(scope="module")
def sources(tmp_path_factory) -> list[TextSource]:
    return make_sources(tmp_path_factory.mktemp("text_sources"))


@pytest.fixture(scope="module")
def spec(sources) -> TextCorpusSpec:
    return TextCorpusSpec("toy", sources, 0.1, "a toy corpus")


def prepare(spec, tokenizer_dir, out: Path, num_proc: int = 1, **kw) -> dict:
    executor = make_executor("local", num_proc)
    try:
        return prepare_text_corpus(spec, tokenizer_dir, out, executor, partition_mb=PARTITION_MB, **kw)
    finally:
        executor.close()


@pytest.fixture(scope="module")
def corpus(spec, toy_tokenizer_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("text_corpus") / "toy"
    prepare(spec, toy_tokenizer_dir, out)
    return out


def tree(path: Path) -> dict[str, bytes]:
    """Every file of a prepared corpus, the manifest without its timestamp, the run's timings left out."""
    files = {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}
    files.pop("training_state.json")
    manifest = json.loads(files.pop("manifest.json"))
    files["manifest.json"] = json.dumps({k: v for k, v in manifest.items() if k not in VOLATILE}).encode()
    return files


def test_partitions_read_the_documents_of_their_source_in_order(sources):
    parts = partitions(sources, int(PARTITION_MB * 2**20))
    kinds = {(p.source, p.kind) for p in parts}
    assert {(0, "files"), (1, "lines"), (2, "whole")} <= kinds, kinds
    assert [p.index for p in parts] == list(range(len(parts)))
    for i, src in enumerate(sources):
        pieces = [doc for p in parts if p.source == i for doc in read_partition(src, p)]
        assert pieces == list(iter_documents(src)) and pieces
    assert len(list(iter_documents(sources[2]))) == 40


def test_shards_are_byte_identical_for_one_and_two_processes(spec, toy_tokenizer_dir, corpus, tmp_path):
    manifest = prepare(spec, toy_tokenizer_dir, tmp_path / "toy", num_proc=2)
    assert tree(tmp_path / "toy") == tree(corpus)
    assert manifest["splits"]["train"]["num_shards"] > 3 and manifest["splits"]["val"]["documents"] > 0
    state = json.loads((tmp_path / "toy" / "training_state.json").read_text())
    assert state["executor"] == "local, 2 processes" and state["partitions"] > 3


def test_the_train_shards_are_the_stream_the_launch_tokenizes(spec, toy_tokenizer_dir, corpus, tmp_path):
    tok = load_tokenizer(toy_tokenizer_dir)
    fingerprint = tokenizer_fingerprint(toy_tokenizer_dir)
    launch, stats = build_streams(PretrainData(spec.sources, val_ratio=spec.val_ratio), tok, fingerprint,
                                  tmp_path / "cache", show_progress=False)
    manifest, streams = load_text_corpus(corpus, fingerprint)
    for split in ("train", "val"):
        assert np.array_equal(streams[split], launch[split]), split
        assert manifest["splits"][split]["documents"] == stats.documents[split]
        assert manifest["splits"][split]["total_tokens"] == stats.tokens[split] == len(launch[split])
    assert manifest["kind"] == "text" and manifest["tokenizer_metadata"]["tokenizer_sha256"] == fingerprint
    assert {s["file"] for s in manifest["splits"]["train"]["shards"]} == {p.name for p in corpus.glob("train_*")}
    assert manifest["sources"]["capped"]["documents_train"] + manifest["sources"]["capped"]["documents_val"] == 40


def test_the_data_card_names_sources_counts_and_excerpts(corpus):
    card = (corpus / "DATA_CARD.md").read_text()
    manifest = json.loads((corpus / "manifest.json").read_text())
    assert manifest["tokenizer_metadata"]["tokenizer_sha256"] in card
    for name in ("docs", "rows", "capped"):
        assert f"### {name}" in card and f"| {name} |" in card
    assert str(manifest["splits"]["train"]["total_tokens"]) in card


def test_a_tampered_shard_is_refused_naming_it(corpus, toy_tokenizer_dir, tmp_path):
    copy = tmp_path / "toy"
    copy.mkdir()
    for path in corpus.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    shard = copy / "train_00001.bin"
    data = bytearray(shard.read_bytes())
    data[5] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"train_00001.bin: sha256 differs from manifest.json .*make "
                                        r"prepare-text-corpus"):
        load_text_corpus(copy, tokenizer_fingerprint(toy_tokenizer_dir))
    assert shard.read_bytes() == bytes(data)


def test_another_tokenizer_and_an_sft_corpus_are_refused(corpus, tmp_path):
    with pytest.raises(UserError, match="^Tokenizer mismatch between datasets!"):
        load_text_corpus(corpus, "0" * 64)
    (tmp_path / "manifest.json").write_text(json.dumps({"format_version": 1, "tokenizer_metadata": {},
                                                        "splits": {}, "sequence_length": 8}))
    with pytest.raises(UserError, match="is an SFT corpus .*, not a raw-text corpus"):
        load_text_corpus(tmp_path, None)


def test_an_existing_corpus_is_kept_without_force_and_replaced_with_it(spec, toy_tokenizer_dir, corpus):
    before = tree(corpus)
    with pytest.raises(UserError, match="already exists; pass --force"):
        prepare(spec, toy_tokenizer_dir, corpus)
    assert tree(corpus) == before
    prepare(spec, toy_tokenizer_dir, corpus, force=True)
    assert tree(corpus) == before


def test_a_source_without_text_is_refused_and_nothing_is_published(toy_tokenizer_dir, tmp_path):
    (tmp_path / "blank.txt").write_text("\n\n")
    spec = TextCorpusSpec("blank", [TextSource(type="text_files", paths=[str(tmp_path / "blank.txt")])], 0.1)
    with pytest.raises(UserError, match="hold no training document"):
        prepare(spec, toy_tokenizer_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["blank.txt"]


def test_ray_address_without_ray_executor_is_refused():
    with pytest.raises(UserError, match="--ray_address: only used with --executor ray"):
        make_executor("local", 1, "127.0.0.1:6379")
    assert LocalExecutor(1).describe() == "local, 1 process"


def test_one_process_runs_on_one_thread_and_leaves_the_callers_environment_as_it_was(monkeypatch):
    """The caller's process and every process it starts afterwards keep their own thread settings: a leaked
    OMP_NUM_THREADS=1 once made every later training subprocess of the test suite compute differently."""
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.delenv("RAYON_NUM_THREADS", raising=False)
    seen = list(LocalExecutor(1).map(lambda _: (os.environ["OMP_NUM_THREADS"], os.environ["RAYON_NUM_THREADS"]),
                                     range(2)))
    assert seen == [("1", "1"), ("1", "1")]
    assert os.environ["OMP_NUM_THREADS"] == "2" and "RAYON_NUM_THREADS" not in os.environ


@pytest.mark.parametrize("stem", ["01_prepare_text_corpus", "02_prepare_sft_corpus"])
def test_executor_ray_without_ray_installed_is_one_line(stem, monkeypatch, toy_tokenizer_dir, tmp_path, capsys):
    from reliability_helpers import error_line, script
    from utils.common.errors import run_cli

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray raises ImportError, as where it is not installed
    config = ROOT / ("config/pretrain/tiny.json" if stem.startswith("01") else "config/sft_datasets/demo.json")
    out = tmp_path / "out"
    assert run_cli(script(stem).main, ["--config", str(config), "--tokenizer_path", str(toy_tokenizer_dir),
                                       "--output_dir", str(out), "--executor", "ray"]) == 2
    assert error_line(capsys) == f"error: {RAY_MISSING}"
    assert not out.exists()


@pytest.mark.parametrize("stem", ["01_prepare_text_corpus", "02_prepare_sft_corpus"])
def test_a_ray_address_that_does_not_answer_is_one_line(stem, toy_tokenizer_dir, tmp_path, capsys):
    from reliability_helpers import error_line, script
    from utils.common.errors import run_cli

    pytest.importorskip("ray")
    config = ROOT / ("config/pretrain/tiny.json" if stem.startswith("01") else "config/sft_datasets/demo.json")
    out = tmp_path / "out"
    assert run_cli(script(stem).main, ["--config", str(config), "--tokenizer_path", str(toy_tokenizer_dir),
                                       "--output_dir", str(out), "--executor", "ray", "--ray_address",
                                       "127.0.0.1:9"]) == 2
    assert error_line(capsys).startswith("error: --ray_address 127.0.0.1:9: no Ray cluster answers there (")
    assert not out.exists()
