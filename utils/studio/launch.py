"""The Launch tab: start a pipeline stage (prepare, pre-training/CPT, SFT, evaluation, export) as an ordinary
detached process — its own session, so closing the studio does not stop it — with its output in a log file the
page streams. The exact command is shown before and after it starts.

Training stages log into their run directory (``studio.log``); prepare, evaluation and export publish their
directory in one rename at the end, so their log lies beside it (``<dir>.studio.log``).
"""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from utils.common.errors import UserError
from utils.common.publish import OWNER_FILE, mark_owner, owner_of

STAGES = {
    "prepare": ("scripts/02_prepare_sft_corpus.py", "config/sft_datasets"),
    "pretrain": ("scripts/01_pretrain.py", "config/pretrain"),
    "sft": ("scripts/03_sft_industrial.py", "config/sft_training"),
    "eval": ("scripts/04_evaluate_sft.py", None),
    "export": ("scripts/05_export_model.py", None),
}
"""Stage -> (script, folder of its shipped configs)."""
TRAINING = ("pretrain", "sft")
LOG = "studio.log"


@dataclass
class StageRequest:
    """What the Launch form holds; empty strings are flags left out."""

    stage: str
    output_dir: str
    config: str = ""
    tokenizer_path: str = ""
    model_path: str = ""
    data_dirs: str = ""
    """Space-separated prepared corpora (SFT, evaluation)."""
    base_model_path: str = ""
    eval_set: str = ""
    extra: str = ""
    """Further flags, shell-quoted (e.g. ``--max_steps 20 --overwrite_output_dir``)."""


CODE = Path(__file__).resolve().parents[2]
"""The repository: its scripts/ and config/ (the studio's --root may be another project directory)."""


def _code_path(relative: str, cwd: Path | None) -> str:
    """``relative`` as the command gives it: as is when run from the repository, else absolute."""
    return relative if cwd is None or Path(cwd).resolve() == CODE else str(CODE / relative)


def shipped_configs(cwd: Path | None, stage: str) -> list[str]:
    """The configs a stage ships with (config/<folder>/*.json), as a command run in ``cwd`` names them."""
    folder = STAGES[stage][1]
    if folder is None:
        return []
    return sorted(_code_path(str(p.relative_to(CODE)), cwd) for p in (CODE / folder).glob("*.json"))


def build_argv(request: StageRequest, python: str = sys.executable, cwd: Path | None = None) -> list[str]:
    """The command line of ``request`` run in ``cwd``; a UserError naming the missing field when one is
    required."""
    if request.stage not in STAGES:
        raise UserError(f"stage {request.stage!r}: unknown; choose one of {', '.join(STAGES)}")
    need = {"prepare": ("config", "tokenizer_path"), "pretrain": ("config", "tokenizer_path"),
            "sft": ("config", "model_path", "data_dirs", "tokenizer_path"), "eval": ("model_path",),
            "export": ("model_path",)}[request.stage]
    for name in ("output_dir",) + need:
        if not getattr(request, name).strip():
            raise UserError(f"{request.stage}: --{name} is required; fill it in")
    argv = [python, _code_path(STAGES[request.stage][0], cwd)]
    for flag in ("config", "model_path", "base_model_path", "tokenizer_path", "eval_set", "output_dir"):
        value = getattr(request, flag).strip()
        if value and not (flag == "config" and request.stage in ("eval", "export")):
            argv += [f"--{flag}", value]
    if request.data_dirs.strip():
        argv += ["--data_dirs", *shlex.split(request.data_dirs)]
    try:
        argv += shlex.split(request.extra)
    except ValueError as err:
        raise UserError(f"extra flags: {err}; quote them as in a shell") from None
    return argv


def log_path(stage: str, output_dir: Path) -> Path:
    output_dir = Path(output_dir)
    return output_dir / LOG if stage in TRAINING else output_dir.parent / f"{output_dir.name}.{LOG}"


@dataclass
class Launched:
    pid: int
    argv: list[str]
    log: Path

    @property
    def command(self) -> str:
        return shlex.join(self.argv)


def launch(request: StageRequest, project_root: Path, python: str = sys.executable) -> Launched:
    """Start the stage detached (new session, stdin closed, output to its log); return at once."""
    argv = build_argv(request, python, project_root)
    out = Path(request.output_dir)
    if not out.is_absolute():
        out = Path(project_root) / out
    log = log_path(request.stage, out)
    if request.stage in TRAINING:
        _prepare_run_dir(out, request.stage)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as handle:
        handle.write(f"$ {shlex.join(argv)}\n".encode())
        handle.flush()
        process = subprocess.Popen(argv, cwd=project_root, stdin=subprocess.DEVNULL, stdout=handle,
                                   stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
    return Launched(process.pid, argv, log)


def _prepare_run_dir(out: Path, stage: str) -> None:
    """A training run's directory before its stage starts: new (marked as the stage's, so the stage accepts the
    log inside it) or already the stage's own; anything else is left for the stage to refuse."""
    if not out.exists():
        out.mkdir(parents=True)
        mark_owner(out, stage)
    elif not (out / OWNER_FILE).exists() and owner_of(out) is None and any(out.iterdir()):
        raise UserError(f"--output_dir {out}: holds files this pipeline did not write; nothing was started — "
                        "choose another output directory")


def read_log(path: Path, offset: int = 0, limit: int = 1 << 20) -> tuple[str, int]:
    """(text added since ``offset``, new offset): the log streams into the page a piece at a time."""
    try:
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read(limit)
    except OSError:
        return "", offset
    return data.decode("utf-8", "replace"), offset + len(data)


def tail_text(text: str, lines: int = 200) -> str:
    """The last ``lines`` lines, progress-bar carriage returns folded (each bar update replaces the last)."""
    out = [line.rsplit("\r", 1)[-1] for line in text.splitlines()]
    return "\n".join(out[-lines:])


def is_alive(pid: int) -> bool:
    """The launched process still runs (a finished child is reaped here, so it does not linger as a zombie)."""
    try:
        done, _status = os.waitpid(pid, os.WNOHANG)
        if done:
            return False
    except ChildProcessError:
        pass  # not our child (the studio restarted): ask the OS
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
