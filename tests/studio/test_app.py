"""The page's handlers without a browser: bad input becomes a message, never an exception; binding rules."""
from __future__ import annotations

import json
import shutil

import pytest

from reliability_helpers import error_line, script
from utils.common.errors import UserError, run_cli
from utils.studio.app import Studio, _message


@pytest.fixture
def studio(studio_home, tmp_path):
    """A studio over a copy of the home, so tests may damage and delete."""
    home = tmp_path / "home"
    shutil.copytree(studio_home, home, symlinks=True)
    return Studio(home)


def test_damaged_metrics_line_is_a_note_and_the_curves_still_draw(studio):
    run = studio.checkpoints / "sft" / "finished"
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write('{"step": 5, "loss": oops\n')
    figure, rows, notes = studio.run_curves([str(run)])
    assert notes == "⚠️ metrics.jsonl line " + str(len((run / "metrics.jsonl").read_text().splitlines())) + \
        ": damaged (Expecting value: line 1 column 21 (char 20)); skipped"
    assert rows[0][1] == 4 and figure.axes[0].lines
    assert studio.run_curves([str(run)], only_changes=True) is None, "nothing new: nothing redrawn"
    with open(run / "metrics.jsonl", "a") as handle:
        handle.write(json.dumps({"step": 6, "loss": 1.0}) + "\n")
    assert studio.run_curves([str(run)], only_changes=True)[1][0][1] == 6


def test_run_deleted_while_shown_is_a_message(studio):
    run = studio.checkpoints / "sft" / "interrupted"
    studio.run_curves([str(run)])
    shutil.rmtree(run)
    _figure, _rows, notes = studio.run_curves([str(run)])
    assert f"{run}: no longer there (deleted or moved)" in notes
    assert "no longer there" in studio.run_details([str(run)])
    assert [r[0] for r in studio.runs_table()[0]] == [str(studio.checkpoints / "sft" / "finished"),
                                                       str(studio.checkpoints / "sft" / "finished" / "eval")]


def test_model_failing_to_load_is_a_message(studio):
    final = studio.checkpoints / "sft" / "finished" / "final"
    (final / "adapter_config.json").write_text("{broken")
    with pytest.raises(UserError) as err:
        list(studio.chat(str(final), "hi", [], [], False, "", 8, 0.0, 1.0))
    assert _message(err.value).startswith(f"⚠️ {final}/adapter_config.json:1:2: invalid JSON")
    with pytest.raises(UserError, match="pick a model first"):
        list(studio.chat("", "hi", [], [], False, "", 8, 0.0, 1.0))


def test_chat_streams_into_the_history_and_the_base_beside_it(studio):
    final = studio.checkpoints / "sft" / "finished" / "final"
    updates = list(studio.chat(str(final), "What is 2 plus 3?", [], [], True, "", 6, 1.0, 1.0))
    history, base_history, status = updates[-1]
    assert [m["role"] for m in history] == ["user", "assistant"] == [m["role"] for m in base_history]
    assert history[0]["content"] == "What is 2 plus 3?"
    assert status.startswith("template chatml (from training_summary.json)") and "; base " in status
    assert len(updates) > 2


def test_other_errors_name_their_type_and_place():
    try:
        {}["x"]
    except KeyError as err:
        text = _message(err)
    assert text.startswith("⚠️ KeyError: 'x' (at test_app.py:")


def test_guarded_handler_keeps_the_page(studio):
    gr = pytest.importorskip("gradio")
    from utils.studio.app import guarded

    @guarded(["first", "second", "status"])
    def broken():
        raise UserError("file.json: damaged")

    first, second, message = broken()
    assert message == "⚠️ file.json: damaged"
    assert first == second == gr.skip()


def test_non_local_host_needs_a_token(capsys, monkeypatch):
    monkeypatch.delenv("STUDIO_TOKEN", raising=False)
    studio_script = script("studio")
    assert run_cli(studio_script.main, ["--host", "0.0.0.0", "--port", "7999"]) == 2
    assert error_line(capsys, alone=True) == (
        "error: --host 0.0.0.0: not a local interface; anyone who reaches it could start runs, so set a token "
        "(--token or STUDIO_TOKEN) or bind 127.0.0.1")
    assert studio_script.auth_for("127.0.0.1", None) is None
    assert studio_script.auth_for("::1", None) is None
    assert studio_script.auth_for("0.0.0.0", "s3cret") == ("studio", "s3cret")
