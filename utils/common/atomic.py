"""Atomic writes: a reader (or a crash) never sees half a file or half a directory."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
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
def atomic_dir(final_dir: str | Path, force: bool = True) -> Iterator[Path]:
    """Yield a temp directory beside ``final_dir``; on success it is synced and renamed into place.

    On any failure the temp directory is removed and an existing ``final_dir`` is untouched.
    With ``force=False`` an existing ``final_dir`` is refused before any work is done.
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and not force:
        raise UserError(f"{final_dir}: already exists; pass --force to replace it")
    try:
        final_dir.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.tmp-", dir=final_dir.parent))
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the published dir gets normal permissions
    except OSError as err:
        raise UserError(f"{final_dir}: cannot write here ({err.strerror})") from None
    try:
        yield tmp
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
