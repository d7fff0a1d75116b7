"""Run a pipeline script with faults injected at exact points (tests only; production code has no hook).

    python tests/fault_inject.py FAULT[,FAULT...] scripts/03_sft_industrial.py ARGS...

The script's real ``main()`` runs under ``run_cli``; the faults are patches of ``utils`` made here, in
this process, before it starts. ``N`` is the global optimizer step (the scheduler's count, so it keeps
counting across resumes). Each fault fires once:

    kill@backward:N      SIGKILL inside step N: gradients computed, the update not applied
    kill@update:N        SIGKILL right after the update of step N (before logging, eval, checkpoint)
    kill@eval:N          SIGKILL during the evaluation at step N (0: the evaluation before training)
    kill@ckpt-write:N    SIGKILL halfway through writing checkpoint-N: weights written, optimizer.pt
                         half written, no training_state.json and no COMPLETE yet
    kill@ckpt-publish:N  SIGKILL when checkpoint-N is complete in its temp dir, before the rename
    kill@rotate:N        SIGKILL while the rotation after checkpoint-N deletes an old checkpoint, after
                         its weights and optimizer state are gone
    fsize@after-ckpt:N   after checkpoint-N, files may not grow past 64 KiB (RLIMIT_FSIZE): every later
                         large write fails with EFBIG, as on a full disk
    nan@update:N         after the update of step N one trainable weight becomes NaN (the loss of step
                         N, computed before the update, is still finite)
    term@update:N        SIGTERM to this process right after the update of step N (int@: SIGINT)
    term-rank1@update:N  the same, only on rank 1 of several processes (the others get no signal)
    kill-rank1@update:N  SIGKILL of rank 1 alone right after the update of step N (the launcher then stops the rest)
    kill@publish-write:0     SIGKILL when an output (corpus, export, report) is written in its temp dir, before it
                             is published: a hidden .NAME.tmp-* stays
    kill@publish-rename:0    where the OS could not swap names in one step: SIGKILL between the two renames of a
                             publish (the previous version moved to .NAME.old-*, the new one not yet in place)
"""
from __future__ import annotations

import importlib.util
import os
import resource
import signal
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import utils.checkpoint.checkpoints as checkpoint  # noqa: E402
import utils.common.publish as publish  # noqa: E402
import utils.train.loop as train_loop  # noqa: E402
from utils.common.errors import run_cli  # noqa: E402

FSIZE_LIMIT = 64 * 1024
_saving: dict = {"step": None}


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def _step(run) -> int:
    return int(run.scheduler.last_epoch)


def _wrap(patch, module, name: str, make) -> None:
    patch(module, name, make(getattr(module, name)))


class _TorchSaveProxy:
    """``torch`` as utils.checkpoint.checkpoints sees it; ``save`` of optimizer.pt at the armed step half-writes and dies."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __getattr__(self, name):
        return getattr(torch, name)

    def save(self, obj, path, *args, **kwargs):
        torch.save(obj, path, *args, **kwargs)
        if Path(path).name == "optimizer.pt" and _saving["step"] == self.step:
            size = os.path.getsize(path)
            os.truncate(path, size // 2)
            _die()


class _ShutilProxy:
    """``shutil`` as utils.checkpoint.checkpoints sees it; once armed, the next rmtree deletes the big files and dies."""

    armed = False

    def __getattr__(self, name):
        import shutil

        return getattr(shutil, name)

    def rmtree(self, path, *args, **kwargs):
        import shutil

        if not _ShutilProxy.armed or not Path(path).is_dir():
            return shutil.rmtree(path, *args, **kwargs)
        for file in sorted(Path(path).iterdir()):
            if file.suffix in (".safetensors", ".pt"):
                file.unlink()
        _die()


def install(faults: str, patch=setattr) -> None:
    """Apply the comma-separated ``faults``; ``patch`` is ``setattr`` or pytest's ``monkeypatch.setattr``."""
    _track_saves(patch)
    for fault in faults.split(","):
        kind, _, step = fault.partition(":")
        if kind not in FAULTS:
            raise SystemExit(f"fault_inject: unknown fault {fault!r}; known: {', '.join(FAULTS)}")
        FAULTS[kind](int(step), patch)


def _after_train_step(step: int, patch) -> None:
    def make(orig):
        def train_step(run, plan, packed=None):
            out = orig(run, plan, packed)
            if _step(run) + 1 == step:
                _die()
            return out
        return train_step
    _wrap(patch, train_loop, "train_step", make)


def _after_update(step: int, patch, action) -> None:
    def make(orig):
        def optimizer_step(run):
            out = orig(run)
            if _step(run) == step:
                action(run)
            return out
        return optimizer_step
    _wrap(patch, train_loop, "optimizer_step", make)


def _signal(signum: int, rank: int | None = None):
    def send(run) -> None:
        if rank is None or run.accelerator.process_index == rank:
            os.kill(os.getpid(), signum)
    return send


def _poison_a_weight(run) -> None:
    with torch.no_grad():
        next(p for p in run.loss_module.parameters() if p.requires_grad).view(-1)[0] = float("nan")


def _in_eval(step: int, patch) -> None:
    def make(orig):
        def evaluate(run):
            if _step(run) == step:
                _die()
            return orig(run)
        return evaluate
    _wrap(patch, train_loop, "evaluate", make)


def _before_publish(step: int, patch) -> None:
    def make(orig):
        def publish_dir(tmp, final):
            if _saving["step"] == step:
                _die()
            orig(tmp, final)
        return publish_dir
    _wrap(patch, checkpoint, "publish_dir", make)


def _in_rotation(step: int, patch) -> None:
    patch(checkpoint, "shutil", _ShutilProxy())

    def make(orig):
        def publish_dir(tmp, final):
            orig(tmp, final)
            _ShutilProxy.armed = _saving["step"] == step
        return publish_dir
    _wrap(patch, checkpoint, "publish_dir", make)


def _file_size_limit_after(step: int, patch) -> None:
    def make(orig):
        def save_checkpoint(accelerator, output_dir, at, *args, **kwargs):
            out = orig(accelerator, output_dir, at, *args, **kwargs)
            if at == step:
                resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, resource.RLIM_INFINITY))
            return out
        return save_checkpoint
    _wrap(patch, train_loop, "save_checkpoint", make)


class _OsProxy:
    """``os`` as utils.common.publish sees it; ``replace`` dies right after its first call."""

    def __getattr__(self, name):
        return getattr(os, name)

    def replace(self, src, dst):
        os.replace(src, dst)
        _die()


def _publish_rename(_step: int, patch) -> None:
    patch(publish, "_exchange", lambda a, b: False)

    def make(orig):
        def publish_dir(tmp, final):
            if Path(final).exists():
                patch(publish, "os", _OsProxy())
            orig(tmp, final)
        return publish_dir
    _wrap(patch, publish, "publish_dir", make)


def _publish_write(_step: int, patch) -> None:
    patch(publish, "share_tree", lambda path: _die())


FAULTS = {
    "kill@backward": _after_train_step,
    "kill@update": lambda step, patch: _after_update(step, patch, lambda run: _die()),
    "kill@eval": _in_eval,
    "kill@ckpt-write": lambda step, patch: patch(checkpoint, "torch", _TorchSaveProxy(step)),
    "kill@ckpt-publish": _before_publish,
    "kill@rotate": _in_rotation,
    "fsize@after-ckpt": _file_size_limit_after,
    "nan@update": lambda step, patch: _after_update(step, patch, _poison_a_weight),
    "term@update": lambda step, patch: _after_update(step, patch, _signal(signal.SIGTERM)),
    "int@update": lambda step, patch: _after_update(step, patch, _signal(signal.SIGINT)),
    "term-rank1@update": lambda step, patch: _after_update(step, patch, _signal(signal.SIGTERM, rank=1)),
    "kill@publish-write": _publish_write,
    "kill@publish-rename": _publish_rename,
    "kill-rank1@update": lambda step, patch: _after_update(
        step, patch, lambda run: _die() if run.accelerator.process_index == 1 else None),
}


def _track_saves(patch) -> None:
    def make(orig):
        def save_checkpoint(accelerator, output_dir, step, *args, **kwargs):
            _saving["step"] = step
            try:
                return orig(accelerator, output_dir, step, *args, **kwargs)
            finally:
                _saving["step"] = None
        return save_checkpoint
    _wrap(patch, train_loop, "save_checkpoint", make)


def main() -> int:
    faults, script, *argv = sys.argv[1:]
    install(faults)
    spec = importlib.util.spec_from_file_location("faulted_script", ROOT / script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return run_cli(module.main, argv)


if __name__ == "__main__":
    sys.exit(main())
