"""Curves: metrics.jsonl read incrementally; damaged lines skipped with a message; files cut or deleted."""
from __future__ import annotations

import json
import os

from utils.studio.curves import CurveCache, MetricsTail, latest_rows, plot_runs


def line(step: int, **values) -> str:
    return json.dumps({"step": step, **values}) + "\n"


def test_refresh_reads_only_the_bytes_added(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(1, loss=2.0, lr=0.1) + line(2, loss=1.5, lr=0.1))
    tail = MetricsTail(path)
    assert tail.refresh() == 2
    first_offset = tail.offset
    assert first_offset == path.stat().st_size
    with open(path, "a") as handle:
        handle.write(line(3, loss=1.0))
    assert tail.refresh() == 1
    assert tail.series("loss") == ([1, 2, 3], [2.0, 1.5, 1.0])
    assert tail.refresh() == 0, "nothing new, nothing read"


def test_half_written_line_waits_for_its_end(tmp_path):
    path = tmp_path / "metrics.jsonl"
    whole = line(4, loss=0.5)
    path.write_text(line(3, loss=0.7) + whole[:7])
    tail = MetricsTail(path)
    assert tail.refresh() == 1 and not tail.messages
    with open(path, "a") as handle:
        handle.write(whole[7:])
    assert tail.refresh() == 1
    assert tail.series("loss") == ([3, 4], [0.7, 0.5])


def test_damaged_line_is_skipped_with_a_message(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(1, loss=2.0) + '{"step": 2, "loss": \n' + '["not", "a", "record"]\n' + line(3, loss=1.0))
    tail = MetricsTail(path)
    assert tail.refresh() == 2
    assert tail.series("loss") == ([1, 3], [2.0, 1.0])
    assert len(tail.messages) == 2
    assert tail.messages[0].startswith("metrics.jsonl line 2: damaged")
    assert tail.messages[1].startswith("metrics.jsonl line 3: not a metrics record")


def test_file_cut_on_resume_is_read_again(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(1, loss=2.0) + line(2, loss=1.5) + line(3, loss=1.2))
    tail = MetricsTail(path)
    tail.refresh()
    tmp = tmp_path / "new"
    tmp.write_text(line(1, loss=2.0))
    os.replace(tmp, path)  # the resumed run drops records after its checkpoint (an atomic rewrite)
    tail.refresh()
    assert tail.series("loss") == ([1], [2.0])


def test_deleted_file_empties_the_curves_with_a_message(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text(line(1, loss=2.0))
    tail = MetricsTail(path)
    tail.refresh()
    path.unlink()
    assert tail.refresh() == 0
    assert tail.records == [] and "no longer there" in tail.messages[-1]


def test_per_source_eval_losses_and_latest_values(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(line(1, loss=2.0, lr=0.01, tokens_per_s=1000.0)
                                       + line(2, **{"eval/loss": 1.9, "eval/a/loss": 1.8, "eval/b/loss": 2.1,
                                                    "eval/a/ppl": 6.0}))
    cache = CurveCache()
    tail = cache.get(run)
    assert tail.source_losses() == ["eval/a/loss", "eval/b/loss"]
    assert cache.get(run) is tail
    assert latest_rows({"r": tail}) == [["r", 2, "2", "1.9", "0.01", "1000"]]
    figure = plot_runs({"r": tail})
    titles = [ax.get_title() for ax in figure.axes]
    assert titles[:6] == ["train loss", "eval loss", "learning rate", "grad norm", "tokens/s", "eval loss per source"]
    assert [len(ax.lines) for ax in figure.axes] == [1, 1, 1, 0, 1, 2]
