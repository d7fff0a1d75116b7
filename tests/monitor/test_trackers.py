"""report_to: metrics.jsonl always, TensorBoard by default, other trackers through accelerate; a tracker that is
named but not installed is one line before anything is written."""
from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from train_helpers import run_training
from utils.common.errors import UserError
from utils.monitor.metrics_log import read_metrics
from utils.monitor.trackers import check_trackers

ROOT = Path(__file__).resolve().parents[2]


def tensorboard_scalars(run_dir: Path, tag: str) -> dict[int, float]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    return {e.step: e.value for e in events.Scalars(tag)}


def test_default_writes_metrics_jsonl_and_the_same_scalars_to_tensorboard(tmp_path):
    run_training(tmp_path, batch=2, steps=4)
    records = [r for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in records] == [1, 2, 3, 4]
    assert all({"lr", "grad_norm", "tokens_per_s"} <= set(r) for r in records)
    losses = tensorboard_scalars(tmp_path, "loss")
    assert losses == pytest.approx({r["step"]: r["loss"] for r in records}, rel=1e-6)
    assert set(tensorboard_scalars(tmp_path, "eval/loss")) == {4}
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*")), "events written in tensorboard/ itself"


def test_report_to_empty_writes_metrics_jsonl_only(tmp_path):
    run_training(tmp_path, batch=2, steps=2, report_to=[])
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r] == [1, 2]
    assert not (tmp_path / "tensorboard").exists()


def test_resume_truncates_metrics_after_the_checkpoint(tmp_path):
    run_training(tmp_path, batch=2, steps=4, save_steps=2)
    first = read_metrics(tmp_path / "metrics.jsonl")
    run_training(tmp_path, batch=2, steps=4, save_steps=2, resume=tmp_path / "checkpoint-2")
    again = [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl") if "loss" in r]
    assert again == [1, 2, 3, 4], "records after step 2 of the first run were dropped, not duplicated"
    assert len(first) == len(read_metrics(tmp_path / "metrics.jsonl"))


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_tracker_not_installed_is_refused_by_name():
    with pytest.raises(UserError) as err:
        check_trackers(["tensorboard", "wandb"])
    assert str(err.value) == ("training_params.report_to: wandb is not installed; `.venv/bin/pip install wandb`, "
                              "or remove 'wandb' from report_to")


@pytest.mark.e2e
@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_cli_refuses_missing_tracker_before_writing(tmp_path, toy_tokenizer_dir):
    config = json.loads((ROOT / "config/pretrain/tiny.json").read_text())
    config["training_params"]["report_to"] = ["wandb"]
    path = tmp_path / "cfg.json"
    path.write_text(json.dumps(config))
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "scripts/01_pretrain.py", "--config", str(path), "--tokenizer_path",
                           str(toy_tokenizer_dir), "--output_dir", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "error: training_params.report_to: wandb is not installed; `.venv/bin/pip install wandb`, "
        "or remove 'wandb' from report_to"]
    assert not out.exists()


@pytest.mark.skipif(importlib.util.find_spec("trackio") is None, reason="trackio not installed "
                    "(requirements-studio.txt)")
@pytest.mark.e2e
def test_trackio_gets_the_metrics_in_a_local_store(tmp_path):
    """trackio runs offline: a child process so its store directory (TRACKIO_DIR, read at import) is ours."""
    code = ("import sys; sys.path[:0] = ['.', 'tests']; from pathlib import Path; from train_helpers import run_training;"
            f"run_training(Path({str(tmp_path / 'run')!r}), batch=2, steps=3, report_to=['trackio'])")
    env = {"TRACKIO_DIR": str(tmp_path / "store"), "PATH": "/usr/bin:/bin", "HOME": str(tmp_path),
           "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    read = ("import json; from trackio.sqlite_storage import SQLiteStorage as S; p = S.get_projects(); "
            "print(json.dumps([p, [[m.get('step'), m.get('loss')] for r in S.get_runs(p[0]) "
            "for m in S.get_logs(p[0], r)]]))")
    proc = subprocess.run([sys.executable, "-c", read], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    projects, logged = json.loads(proc.stdout.strip().splitlines()[-1])
    assert projects == ["sft-pipeline"]  # the run is named after its directory
    assert len(logged) >= 3
    jsonl = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r}
    got = {step: loss for step, loss in logged if loss is not None}
    assert got == pytest.approx(jsonl, rel=1e-6)
