"""Atomic writes: a reader (or a crash) never sees half a file or half a directory."""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

from utils.common.errors import UserError


def fsync_tree(path: Path) -> None:
    """Flush every file below ``path`` and the directories themselves to disk."""
    for root, _dirs, files in os.walk(path):
        for name in files:
            with open(os.path.join(root, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(root))


def share_tree(path: Path) -> None:
    """Give files the permissions the umask allows: some writers (safetensors) create 0600 files."""
    mask = _umask()
    for root, dirs, files in os.walk(path):
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o777 & ~mask)
        for name in files:
            os.chmod(os.path.join(root, name), 0o666 & ~mask)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def publish_dir(tmp_dir: Path, final_dir: Path) -> None:
    """Replace ``final_dir`` by the complete ``tmp_dir`` (same filesystem)."""
    final_dir = Path(final_dir)
    old = None
    if final_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.old-", dir=final_dir.parent))
        os.rmdir(old)
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


@contextlib.contextmanager
def atomic_dir(final_dir: str | Path, force: bool = True, kind: str | None = None) -> Iterator[Path]:
    """Yield a temp directory beside ``final_dir``; on success it is synced and renamed into place.

    On any failure the temp directory is removed and an existing ``final_dir`` is untouched.
    With ``force=False`` an existing ``final_dir`` is refused before any work is done. With a ``kind``
    (a key of KINDS) the directory is marked as that stage's, and an existing ``final_dir`` that another
    stage (or no stage) wrote is refused even with ``force``.
    """
    final_dir = Path(final_dir)
    ours = check_owner(final_dir, kind) if kind else final_dir.exists()
    if ours and not force:
        raise UserError(f"{final_dir}: already exists; pass --force to replace it")
    try:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the published dir gets normal permissions
    except OSError as err:
        raise UserError(f"{final_dir}: cannot write here ({err.strerror})") from None
    try:
        yield tmp
        if kind:
            mark_owner(tmp, kind)
        share_tree(tmp)
        fsync_tree(tmp)
        publish_dir(tmp, final_dir)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        reason = write_failure(err)
        if reason is None:
            raise
        raise UserError(f"{final_dir}: write failed ({reason}); nothing was replaced — "
                        "free disk space or fix permissions and run again") from err


def write_failure(err: BaseException) -> str | None:
    """Why a write failed (disk full, quota, read-only target), or None when ``err`` is something else.

    Besides OSError, the two serialisers the project writes with report a failed write their own way:
    safetensors as SafetensorError ("I/O error: No space left on device"), torch.save as a RuntimeError
    from its zip writer ("[enforce fail at inline_container.cc] ... unexpected pos").
    """
    if isinstance(err, UserError):
        return None
    if isinstance(err, OSError):
        return err.strerror or " ".join(str(err).split())
    text = " ".join(str(err).split())
    if type(err).__name__ == "SafetensorError" and ("I/O error" in text or "os error" in text):
        return text[:300]
    if isinstance(err, RuntimeError) and ("inline_container" in text or "PytorchStreamWriter" in text):
        return f"torch.save: {text[:300]}"
    return None


def write_json_atomic(path: str | Path, data: Any) -> None:
    """Write JSON to ``path`` through a temp file and a rename."""
    write_text_atomic(path, json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n")


def write_text_atomic(path: str | Path, text: str) -> None:
    """Write text to ``path`` through a synced temp file and a rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as err:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise UserError(f"{path}: write failed ({err.strerror})") from None


# --- Ownership and exclusive use of output directories -------------------------------------------------------

OWNER_FILE = ".sft-pipeline-owner"
"""Written into every directory a stage creates: JSON naming the stage kind that owns it."""
KINDS = {"prepare": "a prepared corpus (02_prepare_sft_corpus.py)", "pretrain": "a pre-training run (01_pretrain.py)",
         "sft": "an SFT run (03_sft_industrial.py)", "final": "a trained model (final/ of a training run)",
         "eval": "an evaluation report (04_evaluate_sft.py)", "export": "an exported model (05_export_model.py)"}
_SIGNATURES = {"prepare": ("manifest.json", "DATA_CARD.md"), "export": ("README.md", "training_summary.json"),
               "final": ("training_summary.json",), "eval": ("eval_report.json",)}
"""What a kind's directory written before owner files existed holds (all of these files)."""


def owner_of(path: Path) -> str | None:
    """The stage kind that wrote ``path``: its owner file, else its signature files; None when unknown."""
    try:
        kind = json.loads((path / OWNER_FILE).read_text(encoding="utf-8")).get("stage")
        return kind if kind in KINDS else None
    except (OSError, ValueError, AttributeError, RecursionError):
        pass
    for kind, names in _SIGNATURES.items():
        if all((path / name).is_file() for name in names):
            return kind
    if (path / "metrics.jsonl").is_file() or any(path.glob("checkpoint-*")):
        return "run"  # a training run of either stage, from before owner files
    return None


def mark_owner(path: Path, kind: str) -> None:
    (Path(path) / OWNER_FILE).write_text(json.dumps({"stage": kind}) + "\n", encoding="utf-8")


def check_owner(path: str | Path, kind: str, flag: str = "--output_dir") -> bool:
    """Refuse ``path`` unless it is absent, empty, or written by a stage of ``kind``; True when it is ours."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return False
    if not path.is_dir():
        raise UserError(f"{flag} {path}: is a file, not a directory; choose a directory path")
    entries = sorted(p.name for p in path.iterdir())
    if not entries:
        return False
    found = owner_of(path)
    if found == kind or (found == "run" and kind in ("sft", "pretrain")):
        return True
    what = KINDS.get(found, "a training run") if found else (
        f"{len(entries)} entr{'y' if len(entries) == 1 else 'ies'} this pipeline did not write ({', '.join(entries[:3])}"
        f"{', ...' if len(entries) > 3 else ''})")
    raise UserError(f"{flag} {path}: holds {what}, not {KINDS[kind]}; nothing was changed — choose another "
                    f"{flag} (this stage replaces only a directory it wrote)")


def refuse_inside(output: str | Path, inputs: dict, flag: str = "--output_dir") -> None:
    """Refuse an output directory that is, or lies inside, one of ``inputs`` ({flag: path})."""
    out = Path(output).resolve()
    for name, raw in inputs.items():
        if raw:
            source = Path(raw).resolve()
            if out == source or source in out.parents:
                raise UserError(f"{flag} {output}: is inside {name} {raw}, which this stage reads; "
                                f"nothing was changed — choose an {flag} outside it")


@contextlib.contextmanager
def exclusive(path: str | Path, flag: str = "--output_dir") -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (a ``.<name>.lock`` file beside it) for the block.

    flock: the OS releases it when the process dies, so a killed run never blocks the next one. The lock
    file names the holder and is removed on release; a lock taken on a file already unlinked is retaken.
    """
    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    fd = _take_lock(lock, path, flag)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({' '.join(sys.argv)[:200]})\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            lock.unlink()
        os.close(fd)


def _take_lock(lock: Path, path: Path, flag: str) -> int:
    for _ in range(100):
        try:
            lock.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise UserError(f"{flag} {path}: cannot write here ({err.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 500, 0).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise UserError(f"{flag} {path}: in use by {holder}; wait for it to finish or choose another "
                            f"{flag}") from None
        try:
            if os.fstat(fd).st_ino == os.stat(lock).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)  # the holder removed the file between our open and our lock: take the new one
    raise UserError(f"{flag} {path}: could not lock {lock}; try again")
