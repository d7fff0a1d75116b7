"""How the GPU bench runs its checks (scripts/benchmark_gpu.py): the outcome of one (``Check``), one time limit for
all of them (``Budget``), commands run with their output logged, the runner that records a failing check and goes
on, the report section and the files written for ``--out``. The checks themselves: utils/bench/gpu.py (and the
``gpu_*`` modules beside it), which build on this module and are never imported by it.
"""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch

from utils.bench.scaling import ROOT
from utils.common.errors import UserError
from utils.common.markdown import markdown_table

MAX_OUT_FILES = 8


@dataclass
class Check:
    """The outcome of one check: passed or not, a short line, and the figures it measured."""

    name: str
    passed: bool
    summary: str
    figures: dict = field(default_factory=dict)


class OutOfTime(Exception):
    """The bench's time limit is spent: the check is recorded as not run."""


class Budget:
    """One time limit for every check; each command gets at most what is left of it."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def cap(self, seconds: float) -> int:
        """``seconds``, or less when less is left; OutOfTime when under 5 s are left."""
        left = self.left()
        if left < 5:
            raise OutOfTime
        return int(min(seconds, left))


def require_gpu() -> str:
    """The GPU's name; a UserError (one line) when torch sees no CUDA device."""
    if not torch.cuda.is_available():
        raise UserError("bench-gpu: no CUDA GPU visible to torch (torch.cuda.is_available() is False); "
                        "run it on a machine with a GPU and a CUDA build of torch")
    return torch.cuda.get_device_name(0)


def _label(command: list[str]) -> str:
    """What a command runs, for its messages: the script, or the make target."""
    scripts = [Path(arg).name for arg in command if arg.endswith(".py")]
    if scripts:
        return scripts[0]
    words = [arg for before, arg in zip(["", *command], command)
             if before != "-C" and not arg.startswith("-") and "=" not in arg]
    return " ".join(words[:2])


def run_logged(command: list[str], log: Path, timeout: int, cwd: Path = ROOT) -> None:
    """Run ``command`` with its output in ``log``; a UserError (one line) when it fails or runs past ``timeout``."""
    with open(log, "w") as out:
        try:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise UserError(f"{_label(command)} ran past {timeout}s (last line: {tail[0][:200]}); "
                            f"see {log}") from None
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"{_label(command)} failed (exit {code}): {tail[0][:300]}; full log in {log}")


def run_checks(names: list[str], checks: dict[str, Callable[[], Check]], budget: Budget) -> list[Check]:
    """The checks asked for, in order, from ``checks`` (by name, ready to run: ``gpu.full_checks``, with
    ``gpu_quick.quick_checks``); a failing one is recorded and the others still run."""
    out = []
    for name in names:
        try:
            budget.cap(1)
            out.append(checks[name]())
        except OutOfTime:
            out.append(Check(name, False, "not run: the bench's time limit was spent"))
        except (UserError, RuntimeError, OSError, KeyError, ValueError) as err:
            out.append(Check(name, False, f"error: {str(err).splitlines()[0][:300]}"))
        print(f"[bench-gpu] {name}: {'ok' if out[-1].passed else 'FAILED'}: {out[-1].summary}", flush=True)
    return out


def write_out(out: Path, checks: list[Check], text: str, work: Path, tail_lines: int = 60) -> list[Path]:
    """At most MAX_OUT_FILES small files in ``out``: the report, every figure as JSON, the end of each log,
    and the demo's table."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"gpu_checks.md": text + "\n",
             "gpu_checks.json": json.dumps([asdict(c) for c in checks], indent=2, default=str) + "\n"}
    logs = []
    for log in sorted(work.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        logs.append(f"==> {log.name} (last {min(tail_lines, len(lines))} of {len(lines)} lines)\n"
                    + "\n".join(lines[-tail_lines:]))
    if logs:
        files["gpu_logs.txt"] = "\n\n".join(logs) + "\n"
    demo = next((c for c in checks if c.name == "demo" and "table" in c.figures), None)
    if demo:
        files["demo_summary.md"] = demo.figures["table"]
    assert len(files) <= MAX_OUT_FILES
    written = []
    for name, content in files.items():
        (out / name).write_text(content, encoding="utf-8")
        written.append(out / name)
    return written


def report(checks: list[Check], gpu: str, command: str, date: str) -> str:
    """The Markdown section of docs/BENCHMARKS.md for one run."""
    rows = [[c.name, "yes" if c.passed else "**no**", c.summary] for c in checks]
    table = "\n".join(markdown_table(["check", "passed", "result"], rows))
    text = f"### GPU checks\n\n`{command}` ({date}, {gpu})\n\n{table}"
    demo = next((c for c in checks if c.name == "demo" and "table" in c.figures), None)
    if demo:  # the main job's own closing table
        text += "\n\nThe main job on this GPU (`make sft-pipeline-complete`):\n\n" + demo.figures["table"].strip()
    return text
