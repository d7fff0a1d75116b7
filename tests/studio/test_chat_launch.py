"""Chat and Launch tabs: streaming replies through the model's template; stages started as detached processes."""
from __future__ import annotations

import os
import shlex
import shutil
import sys
import time

import pytest

from reliability_helpers import ROOT, sft_config, sft_work
from utils.common.errors import UserError
from utils.model.generation import GenerationSettings, generate_responses
from utils.studio import chat, launch
from utils.studio.runs import read_run


def test_models_are_the_final_dirs(studio_home):
    models = chat.find_models(studio_home / "checkpoints")
    assert [str(p.relative_to(studio_home)) for p in models] == ["checkpoints/sft/finished/final"]
    assert chat.template_name(models[0]) == ("chatml", "training_summary.json")
    assert chat.base_of(models[0]).endswith("/model")


def test_the_chat_tab_opens_on_the_newest_sft_final(studio_home, tmp_path):
    """SFT finals come first, newest first; pre-trained finals and exports after them, by name."""
    import json
    import os
    import shutil

    root = tmp_path / "checkpoints"
    finished = studio_home / "checkpoints" / "sft" / "finished" / "final"
    for name, stage, age in (("pretrain/tiny/final", "pretrain", 0), ("sft_industrial/old/final", "sft", 200),
                             ("sft_industrial/new/final", "sft", 100), ("export/new", "sft", 0)):
        folder = root / name
        shutil.copytree(finished, folder)
        summary = folder / "training_summary.json"
        summary.write_text(json.dumps({**json.loads(summary.read_text()), "stage": stage}))
        os.utime(summary, (summary.stat().st_mtime - age,) * 2)
    assert [str(p.relative_to(root)) for p in chat.find_models(root)] == [
        "sft_industrial/new/final", "sft_industrial/old/final", "export/new", "pretrain/tiny/final"]


def test_streamed_reply_is_the_greedy_generation(studio_home):
    final = studio_home / "checkpoints" / "sft" / "finished" / "final"
    loaded = chat.ModelCache().get(final)
    messages = chat.to_messages([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
                                "What is 2 plus 3?", system="Be brief.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    pieces = list(chat.stream_reply(loaded, messages, max_new_tokens=12))
    assert pieces, "at least one update"
    assert all(later.startswith(earlier) for earlier, later in zip(pieces, pieces[1:])), "the reply only grows"
    expected = generate_responses(loaded.model, loaded.tokenizer, loaded.template, [messages],
                                  GenerationSettings(max_new_tokens=12))[0].text
    assert pieces[-1].strip() == expected


def test_model_that_fails_to_load_is_one_line(tmp_path, studio_home):
    broken = tmp_path / "final"
    shutil.copytree(studio_home / "checkpoints" / "sft" / "finished" / "final", broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"not safetensors")
    with pytest.raises(UserError) as err:
        chat.load_chat_model(broken)
    assert str(err.value).startswith(f"{broken}: ") and "\n" not in str(err.value)
    with pytest.raises(UserError, match="not found"):
        chat.load_chat_model(tmp_path / "gone")


def test_commands_of_each_stage(tmp_path):
    argv = launch.build_argv(launch.StageRequest("sft", "out", "config/sft_training/lora_tiny.json", "tok", "m",
                                                 "d1 d2", extra="--max_steps 3"), python="py")
    assert argv == ["py", "scripts/03_sft_industrial.py", "--config", "config/sft_training/lora_tiny.json",
                    "--model_path", "m", "--tokenizer_path", "tok", "--output_dir", "out",
                    "--data_dirs", "d1", "d2", "--max_steps", "3"]
    argv = launch.build_argv(launch.StageRequest("eval", "o", "ignored", model_path="m", base_model_path="b",
                                                 eval_set="e.jsonl"), python="py")
    assert argv == ["py", "scripts/04_evaluate_sft.py", "--model_path", "m", "--base_model_path", "b",
                    "--eval_set", "e.jsonl", "--output_dir", "o"]
    with pytest.raises(UserError, match=r"^sft: --model_path is required"):
        launch.build_argv(launch.StageRequest("sft", "out", "c", "tok"))
    with pytest.raises(UserError, match="extra flags"):
        launch.build_argv(launch.StageRequest("export", "o", model_path="m", extra="--x 'open"))
    assert "config/sft_training/lora_tiny.json" in launch.shipped_configs(ROOT, "sft")
    assert launch.shipped_configs(ROOT, "export") == []
    elsewhere = launch.shipped_configs(tmp_path, "sft")
    assert f"{ROOT}/config/sft_training/lora_tiny.json" in elsewhere, "run from another directory: absolute paths"
    assert launch.build_argv(launch.StageRequest("export", "o", model_path="m"), "py", tmp_path)[1] == \
        f"{ROOT}/scripts/05_export_model.py"


def wait_for(predicate, timeout: float = 240.0) -> bool:
    end = time.time() + timeout
    while time.time() < end:
        if predicate():
            return True
        time.sleep(0.2)
    return False


def test_launched_stage_runs_in_its_own_session_and_logs(tmp_path):
    request = launch.StageRequest("prepare", str(tmp_path / "corpus"), str(tmp_path / "missing.json"), "tok")
    started = launch.launch(request, ROOT)
    assert os.getsid(started.pid) == started.pid, "a session of its own: closing the studio does not stop it"
    assert started.log == tmp_path / "corpus.studio.log"
    assert wait_for(lambda: not launch.is_alive(started.pid))
    text, offset = launch.read_log(started.log)
    assert text.splitlines()[0] == f"$ {shlex.join(started.argv)}"
    assert "error: " in text and "missing.json" in text
    more, _ = launch.read_log(started.log, offset)
    assert more == ""


@pytest.mark.e2e
def test_launched_training_logs_inside_its_run_and_shows_under_runs(tmp_path, tmp_path_factory, toy_tokenizer_dir,
                                                                   studio_home):
    work = sft_work(tmp_path_factory, toy_tokenizer_dir)
    data = studio_home / "data" / "sft_processed"
    out = tmp_path / "launched"
    request = launch.StageRequest("sft", str(out), str(sft_config(work, "launched", max_steps=2)),
                                  str(work / "tokenizer"), str(work / "model"), f"{data / 'instruct'} {data / 'chat'}")
    started = launch.launch(request, ROOT)
    assert started.log == out / "studio.log"
    assert wait_for(lambda: not launch.is_alive(started.pid))
    text = started.log.read_text()
    assert text.startswith(f"$ {shlex.join(started.argv)}\n") and f"final: {out}/final" in text, text[-2000:]
    run = read_run(out)
    assert run.state == "finished" and run.kind == "SFT" and run.step == 2
    assert run.command[1:] == started.argv[1:] and run.command[0] == sys.executable


def test_foreign_directory_is_refused_before_starting(tmp_path):
    (tmp_path / "mine.txt").write_text("keep")
    with pytest.raises(UserError, match="did not write"):
        launch.launch(launch.StageRequest("sft", str(tmp_path), "c", "t", "m", "d"), ROOT)
    assert [p.name for p in tmp_path.iterdir()] == ["mine.txt"]
