"""Data and Evaluation tabs: corpus figures and highlighted examples from shards; eval report tables."""
from __future__ import annotations

import json
import shutil

import pytest

from utils.common.errors import UserError
from utils.data.tokenizer import load_tokenizer
from utils.eval.report import fmt
from utils.studio import data_view, evals


def test_corpus_figures_come_from_the_manifest(studio_home):
    corpora = data_view.find_corpora(studio_home / "data" / "sft_processed")
    assert [p.name for p in corpora] == ["chat", "instruct"]
    manifest = json.loads((corpora[1] / "manifest.json").read_text())
    summary = data_view.corpus_summary(corpora[1])
    train = manifest["splits"]["train"]
    assert summary["splits"][0] == ["train", train["conversations"], train["total_tokens"],
                                    train["supervised_tokens"], train["num_shards"]]
    source = manifest["sources"]["instruct"]
    assert summary["sources"] == [["instruct", source["read"], source["dropped"], source["kept_train"],
                                   source["written_train"], source["weight"], "-", source["achieved_ratio"]]]
    assert summary["histogram"].endswith("length_histogram.png")
    assert summary["template"] == "chatml"
    assert data_view.num_examples(corpora[1], "train") == train["conversations"]


def test_drops_by_reason(tmp_path, studio_home):
    corpus = tmp_path / "c"
    shutil.copytree(studio_home / "data" / "sft_processed" / "chat", corpus)
    state = json.loads((corpus / "training_state.json").read_text())
    state["drops"] = {"too_long": {"chat": 3}, "duplicate": {"chat": 1, "other": 2}}
    (corpus / "training_state.json").write_text(json.dumps(state))
    assert data_view.corpus_summary(corpus)["drops"] == [["too_long", 3, "chat: 3"],
                                                         ["duplicate", 3, "chat: 1, other: 2"]]


def test_example_highlights_exactly_the_trained_tokens(studio_home, toy_tokenizer_dir):
    corpus = studio_home / "data" / "sft_processed" / "chat"
    example = data_view.read_example(corpus, "train", 1)
    tok = load_tokenizer(toy_tokenizer_dir)
    segments = data_view.highlight(example["input_ids"], example["labels"],
                                   lambda ids: tok.decode(ids, skip_special_tokens=False))
    assert "".join(t for t, _ in segments) == tok.decode(example["input_ids"], skip_special_tokens=False)
    trained_runs = sum(1 for k, x in enumerate(example["labels"]) if x != -100
                       and (k == 0 or example["labels"][k - 1] == -100))
    assert sum(1 for _, label in segments if label) == trained_runs == 2, "two assistant turns are trained"
    assert [label for _, label in segments][:2] == [None, "trained"]
    rendered, caption = data_view.ExampleBrowser().render(corpus, "train", 1)
    assert rendered == segments
    assert caption.startswith("source chat:") and "trained (highlighted)" in caption
    assert all(t.endswith("<|im_end|>") for t, label in segments if label), "each trained run ends its turn"


def test_example_out_of_range_and_damaged_shard_are_messages(tmp_path, studio_home):
    corpus = tmp_path / "c"
    shutil.copytree(studio_home / "data" / "sft_processed" / "chat", corpus)
    with pytest.raises(UserError, match="out of range"):
        data_view.read_example(corpus, "train", 10_000)
    (corpus / "train_00000.jsonl").write_text("{broken\n" * 3)
    with pytest.raises(UserError, match=r"train_00000.jsonl:1: not a valid example"):
        data_view.read_example(corpus, "train", 0)
    (corpus / "manifest.json").unlink()
    with pytest.raises(UserError, match="manifest.json: not found"):
        data_view.corpus_summary(corpus)


def test_eval_report_tables(studio_home):
    found = evals.find_reports(studio_home / "checkpoints")
    assert [p.name for p in found] == ["eval"]
    report = evals.load_report(found[0])
    rows = {r[0]: r for r in evals.metric_rows(report)}
    assert rows["val_loss"][1] == fmt(report["tuned"]["val_loss"])
    assert rows["val_loss"][2] == fmt(report["base"]["val_loss"])
    families = evals.family_rows(report)
    assert [f[0] for f in families] == ["sum"] and families[0][1] == 3
    assert [s[0] for s in evals.source_rows(report)] == ["instruct"]
    assert all(len(row) == len(evals.FAMILY_HEADERS) for row in families)
    assert all(len(row) == len(evals.SOURCE_HEADERS) for row in evals.source_rows(report))
    markdown = (found[0] / "eval_report.md").read_text()  # the studio shows the Markdown report's rows
    assert "| " + " | ".join(str(cell) for cell in families[0]) + " |" in markdown
    assert [p.rsplit("/", 1)[-1] for p in evals.plots(found[0])] == [
        f for f in report["files"] if f.endswith(".png")]
    generations = evals.generations(found[0])
    assert len(generations) == 3 and generations[0][0] == "sum"
    assert generations[0][2] == "The answer is 1." and generations[0][4] in ("yes", "no")
    assert evals.generations(found[0], task="other") == []


def test_missing_or_damaged_report_is_a_message(tmp_path):
    with pytest.raises(UserError, match="not found"):
        evals.load_report(tmp_path)
    (tmp_path / "eval_report.json").write_text("{")
    with pytest.raises(UserError, match="unreadable"):
        evals.load_report(tmp_path)
