"""Who owns a run's output directory: locked for the run, marked as a training stage's, never another run's
checkpoints unless asked (--resume_from_checkpoint to continue them, --overwrite_output_dir to delete them)."""
from __future__ import annotations

import contextlib
import os
import shutil
import sys
from pathlib import Path

import torch

from utils.checkpoint.checkpoints import list_checkpoints
from utils.common.errors import UserError
from utils.common.locks import exclusive
from utils.common.publish import check_owner, mark_owner, write_json_atomic
from utils.train.cli import RunInputs

COMMAND = "command.json"
"""The command line that started the run (argv, interpreter, working directory): how to run it again or resume it."""
RUN_OUTPUTS = ("final", "metrics.jsonl", "samples.jsonl", "tensorboard", "loss.png", COMMAND)
"""What a training run writes besides its checkpoints: --overwrite_output_dir deletes these too."""


@contextlib.contextmanager
def own_output(accelerator, inputs: RunInputs, kind: str):
    """Hold ``inputs.output_dir`` for this run: locked, owned by a ``kind`` stage, no other run's checkpoints.

    The main process checks and locks; every rank learns the outcome, so none waits for a refused run.
    """
    with contextlib.ExitStack() as stack:
        failure = None
        if accelerator.is_main_process:
            try:
                stack.enter_context(exclusive(inputs.output_dir))
                _claim(inputs, kind)
                _record_command(inputs.output_dir)
            except UserError as err:
                failure = err
        if accelerator.num_processes > 1:
            flag = torch.tensor([float(failure is not None)], device=accelerator.device)
            if accelerator.reduce(flag, "sum").item() and failure is None:
                failure = UserError("--output_dir: refused on the main process; see its message")
        if failure is not None:
            raise failure
        yield


def _record_command(output_dir: Path) -> None:
    write_json_atomic(Path(output_dir) / COMMAND, {"argv": sys.argv, "python": sys.executable, "cwd": os.getcwd()})


def _claim(inputs: RunInputs, kind: str) -> None:
    """Refuse another stage's directory and, unless resuming or overwriting, another run's checkpoints."""
    out = inputs.output_dir
    check_owner(out, kind)
    found = list_checkpoints(out) if out.is_dir() else []
    if found and not inputs.resume_from_checkpoint:
        if not inputs.overwrite_output_dir:
            raise UserError(
                f"--output_dir {out}: holds checkpoints of an earlier run ({', '.join(p.name for p in found)}); "
                "pass --resume_from_checkpoint auto to continue it, or --overwrite_output_dir to delete them and "
                "start over, or choose another --output_dir")
        for old in [*found, *(out / name for name in RUN_OUTPUTS)]:
            if old.is_dir():
                trash = old.with_name(f".{old.name}.deleting")
                shutil.rmtree(trash, ignore_errors=True)
                os.replace(old, trash)  # out of the listing first: a crash never leaves half a checkpoint
                shutil.rmtree(trash, ignore_errors=True)
            elif old.exists():
                old.unlink()
        print(f"--overwrite_output_dir: deleted the earlier run's {len(found)} checkpoint(s), final/ and metrics "
              f"in {out}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    mark_owner(out, kind)
