"""The Runs tab: every pre-training, CPT, SFT, evaluation and export run under a root, read from its own files.

State comes from what the stages write, never from guesses:
running      the output directory's lock (``.<name>.lock`` beside it, utils/common/locks.py ``exclusive``) is
             held by a live process (flock: the OS drops it when the process dies);
finished     ``final/training_summary.json`` (training), ``eval_report.json`` (evaluation), an export's files;
interrupted  anything else: checkpoints or metrics of a run that stopped before final/.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from utils.checkpoint.checkpoints import list_checkpoints
from utils.common.publish import owner_of

SKIP = {"tensorboard", "data_cache", "final", "__pycache__", ".git"}
"""Directories inside a run that are never runs themselves (checkpoint-N are skipped by name)."""
TRAINING = {"pretrain", "sft", "run"}


@dataclass
class Checkpoint:
    name: str
    step: int
    path: Path


@dataclass
class Run:
    """What the Runs tab shows of one run directory."""

    path: Path
    kind: str
    """pre-training, CPT, SFT, evaluation or export."""
    state: str
    """running, finished or interrupted."""
    holder: str = ""
    """The lock file's text while running (pid and command)."""
    step: int | None = None
    total_steps: int | None = None
    config: dict = field(default_factory=dict)
    data_mix: list[tuple[str, float]] = field(default_factory=list)
    tokenizer_sha256: str = ""
    model_path: str = ""
    checkpoints: list[Checkpoint] = field(default_factory=list)
    command: list[str] | None = None
    """The command line that started the run (command.json), None for runs from before it was recorded."""

    @property
    def name(self) -> str:
        return str(self.path)

    def resume_command(self, checkpoint: str = "auto") -> str:
        """The exact command that continues this run from ``checkpoint`` (a name, a path, or auto)."""
        if self.kind in ("evaluation", "export"):
            return ""
        if self.command is None:
            return (f"(this run did not record its command line) run the same command again with "
                    f"--resume_from_checkpoint {checkpoint}")
        target = checkpoint if checkpoint == "auto" else str(self.path / Path(checkpoint).name)
        return shlex.join(resume_argv(self.command, target))


def resume_argv(argv: list[str], checkpoint: str) -> list[str]:
    """``argv`` without --overwrite_output_dir (it would delete the checkpoints) and with the resume flag."""
    out, skip = [], False
    for arg in argv:
        if skip:
            skip = False
            continue
        if arg == "--overwrite_output_dir":
            continue
        if arg == "--resume_from_checkpoint":
            skip = True
            continue
        if arg.startswith("--resume_from_checkpoint="):
            continue
        out.append(arg)
    return out + ["--resume_from_checkpoint", checkpoint]


def lock_holder(path: Path) -> str | None:
    """The lock text when a live process holds ``path``'s lock, else None; never creates or takes the lock."""
    lock = path.parent / f".{path.name}.lock"
    try:
        fd = os.open(lock, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return os.pread(fd, 500, 0).decode("utf-8", "replace").strip() or "a running process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def discover(root: Path, max_depth: int = 5) -> list[Run]:
    """Every run under ``root`` (newest first), running ones whose directory is not written yet included."""
    root = Path(root)
    runs: list[Run] = []
    if not root.is_dir():
        return runs
    for path in _candidates(root, max_depth):
        run = read_run(path)
        if run is not None:
            runs.append(run)
    runs.sort(key=lambda r: (r.state != "running", -_mtime(r.path)))
    return runs


def _candidates(root: Path, max_depth: int):
    stack = [(root, 0)]
    while stack:
        path, depth = stack.pop()
        try:
            entries = sorted(path.iterdir())
        except OSError:
            continue  # deleted or unreadable while we looked: not a run
        for entry in entries:
            lock = re.fullmatch(r"\.(.+)\.lock", entry.name)
            if lock and not (path / lock.group(1)).exists():
                yield path / lock.group(1)  # a stage writing atomically (evaluation): only the lock exists yet
            if not entry.is_dir() or entry.name.startswith(".") or entry.name in SKIP \
                    or entry.name.startswith("checkpoint-"):
                continue
            yield entry
            if depth + 1 < max_depth:
                stack.append((entry, depth + 1))


def read_run(path: Path) -> Run | None:
    """The run in ``path``, or None when it is not one (a corpus, a tokenizer, any other folder)."""
    holder = lock_holder(path)
    kind = owner_of(path) if path.is_dir() else None
    if kind is None and holder is None:
        return None
    if kind is None:  # only the lock: which stage, from the command in it
        kind = "eval" if "evaluate" in holder else "export" if "export" in holder else "run"
    if kind in ("prepare", "final"):
        return None
    try:
        if kind in TRAINING:
            return _training_run(path, holder)
        finished = (path / ("eval_report.json" if kind == "eval" else "training_summary.json")).is_file()
        return Run(path=path, kind={"eval": "evaluation", "export": "export"}[kind],
                   state="running" if holder else "finished" if finished else "interrupted", holder=holder or "",
                   model_path=_model_of_eval(path) if kind == "eval" else "")
    except FileNotFoundError:
        return None  # deleted while read


def _training_run(path: Path, holder: str | None) -> Run:
    checkpoints = [Checkpoint(p.name, int(p.name.split("-")[1]), p) for p in list_checkpoints(path)]
    summary = _json(path / "final" / "training_summary.json")
    state = (_json(checkpoints[-1].path / "training_state.json") if checkpoints else None) or {}
    info = summary or state
    config = info.get("config") or {}
    plan = info.get("plan") or {}
    model = info.get("model_path") or (plan.get("model") or {}).get("value", "")
    stage = info.get("stage") or ("sft" if "data_dirs" in info or (path / "samples.jsonl").exists() else "")
    if stage == "sft" or owner_of(path) == "sft":
        kind = "SFT"
    elif model and model != "new preset":
        kind = "CPT"
    else:
        kind = "pre-training" if info or owner_of(path) == "pretrain" else "training"
    mix = list(zip(info.get("data_dirs") or [], info.get("data_weights") or []))
    if not mix and "data" in config:
        mix = [(s.get("name", "?"), s.get("weight", 1.0)) for s in config["data"].get("sources", [])]
        mix += [(s.get("data_dir", "?"), s.get("weight", 1.0)) for s in config["data"].get("supervised") or []]
    command = _json(path / "command.json") or {}
    return Run(path=path, kind=kind,
               state="running" if holder else "finished" if summary is not None else "interrupted",
               holder=holder or "", step=info.get("steps", state.get("step")),
               total_steps=state.get("total_steps"), config=config, data_mix=mix,
               tokenizer_sha256=info.get("tokenizer_sha256", ""), model_path=str(model), checkpoints=checkpoints,
               command=([command.get("python") or "python", *command["argv"]] if command.get("argv") else None))


def _model_of_eval(path: Path) -> str:
    report = _json(path / "eval_report.json") or {}
    return str(report.get("model_path", ""))


def _json(path: Path) -> dict | None:
    """A JSON object from ``path``; None when absent, unreadable or half-written."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) else None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return 0.0


def overview_rows(runs: list[Run]) -> list[list]:
    """One table row per run: path, kind, state, step, checkpoints."""
    return [[r.name, r.kind, r.state, "" if r.step is None else f"{r.step}" + (f"/{r.total_steps}" if r.total_steps
             else ""), ", ".join(c.name for c in r.checkpoints)] for r in runs]


def describe(run: Run) -> str:
    """The run's details as Markdown: state, model, tokenizer, data mix, config, checkpoints and resume commands."""
    lines = [f"### {run.path}", "", f"- **{run.kind}**, **{run.state}**"
             + (f" (held by {run.holder})" if run.holder else "")]
    if run.step is not None:
        lines.append(f"- step {run.step}" + (f" of {run.total_steps}" if run.total_steps else ""))
    if run.model_path:
        lines.append(f"- model: `{run.model_path}`")
    if run.tokenizer_sha256:
        lines.append(f"- tokenizer fingerprint: `{run.tokenizer_sha256[:16]}`")
    if run.data_mix:
        total = sum(float(w) for _, w in run.data_mix) or 1.0
        lines += ["", "| data | weight | share |", "|---|---|---|"]
        lines += [f"| `{d}` | {w:g} | {float(w) / total:.1%} |" for d, w in run.data_mix]
    if run.checkpoints:
        lines += ["", "| checkpoint | step | resume with |", "|---|---|---|"]
        lines += [f"| `{c.name}` | {c.step} | `{run.resume_command(c.name)}` |" for c in run.checkpoints]
    if run.state == "interrupted" and run.kind not in ("evaluation", "export"):
        lines += ["", f"Resume the newest intact checkpoint: `{run.resume_command('auto')}`"]
    if run.config:
        lines += ["", "<details><summary>config</summary>", "", "```json", json.dumps(run.config, indent=1),
                  "```", "</details>"]
    return "\n".join(lines)
