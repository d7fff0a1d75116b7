"""scripts/benchmark_scaling.py: the generator, the report section, and the whole small path."""
from __future__ import annotations

import json

import pytest

from scripts_loader import load_script
from utils.bench.scaling import conversation, write_section
from utils.common.errors import run_cli


def test_generated_conversations_are_distinct_and_well_formed():
    rows = [conversation(i) for i in range(3000)]
    assert len({json.dumps(r) for r in rows}) == 3000
    for row in rows[:50]:
        assert [m["role"] for m in row["messages"]] == ["user", "assistant"]
        assert all(m["content"].strip() for m in row["messages"])


def test_the_section_is_replaced_and_the_rest_kept(tmp_path):
    doc = tmp_path / "B.md"
    doc.write_text("# Title\n\nhand-written\n")
    write_section(doc, "first")
    write_section(doc, "second")
    text = doc.read_text()
    assert text.startswith("# Title\n\nhand-written\n") and "second" in text and "first" not in text
    assert text.count("scaling:begin") == 1


@pytest.mark.e2e
def test_small_path_prepares_and_trains_and_reports(tmp_path, toy_tokenizer_dir, capsys):
    script = load_script("benchmark_scaling")
    report, plot, out = tmp_path / "B.md", tmp_path / "s.png", tmp_path / "s.json"
    report.write_text("# Benchmarks\n")
    code = run_cli(script.main, ["--parts", "sft", "--sizes", "200", "--steps", "1", "--tokenizer_path",
                                 str(toy_tokenizer_dir),
                                 "--work_dir", str(tmp_path / "work"), "--report", str(report),
                                 "--plot", str(plot), "--json", str(out)])
    assert code == 0, capsys.readouterr().err
    [result] = json.loads(out.read_text())
    assert result["conversations"] == 200 and result["examples"] == 200
    assert result["prepare_rss_mb"] > 10 and result["train_rss_mb"] > result["prepare_rss_mb"] / 10
    assert 0 < result["train_startup_cpu_s"] and 0 < result["train_startup_s"] < result["train_s"]
    assert result["output_mb"] > 0 and plot.stat().st_size > 1000
    text = report.read_text()
    assert text.startswith("# Benchmarks\n") and "| 200 |" in text and "![cost as the corpus grows](s.png)" in text


def test_a_used_work_dir_is_refused_and_left_alone(tmp_path, capsys):
    script = load_script("benchmark_scaling")
    work = tmp_path / "work"
    work.mkdir()
    (work / "mine.txt").write_text("keep")
    assert run_cli(script.main, ["--sizes", "200", "--work_dir", str(work), "--report", str(tmp_path / "B.md")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--work_dir" in err[0] and "not empty" in err[0]
    assert (work / "mine.txt").read_text() == "keep" and not (tmp_path / "B.md").exists()


def test_the_text_part_measures_each_executor_with_the_same_shards(tmp_path, toy_tokenizer_dir, capsys):
    script = load_script("benchmark_scaling")
    report = tmp_path / "B.md"
    report.write_text("# Benchmarks\n")
    code = run_cli(script.main, ["--parts", "text", "--text_executors", "local", "--text_mb", "0.2",
                                 "--partition_mb", "0.05", "--tokenizer_path", str(toy_tokenizer_dir),
                                 "--work_dir", str(tmp_path / "work"), "--report", str(report)])
    assert code == 0, capsys.readouterr().err
    text = report.read_text()
    assert "text-scaling:begin" in text and "| local | 1 |" in text and "| local | 2 |" in text
    assert "scaling:begin (written" not in text.replace("text-scaling:begin", "")
