"""Publishing an output: a reader (or a crash) never sees half a file or half a directory, and a stage replaces
only a directory it wrote (its owner file). Who may use an output meanwhile is utils/common/locks.py."""
from __future__ import annotations

import contextlib
import ctypes
import errno
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
    """Replace ``final_dir`` by the complete ``tmp_dir`` (same filesystem), so that at every moment one whole
    version is at ``final_dir``.

    Where the OS can swap two names in one step (Linux ``renameat2`` RENAME_EXCHANGE) the new and old versions
    trade places and the old one, now at ``tmp_dir``, is deleted. Elsewhere the old version is first renamed to
    a hidden ``.NAME.old-*``; a process killed between the two renames leaves it there, and the next writer (or
    reader, ``recover_published``) puts it back.
    """
    final_dir = Path(final_dir)
    if final_dir.exists() and _exchange(Path(tmp_dir), final_dir):
        _fsync_dir(final_dir.parent)
        shutil.rmtree(tmp_dir, ignore_errors=True)  # the previous version: a kill here leaves a .tmp-* to sweep
        return
    old = None
    if final_dir.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{final_dir.name}.old-", dir=final_dir.parent))
        os.rmdir(old)
        os.replace(final_dir, old)
    os.replace(tmp_dir, final_dir)
    _fsync_dir(final_dir.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap the names ``a`` and ``b`` in one step; False where the OS or the filesystem cannot."""
    try:
        rename = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    rename.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    if rename(_AT_FDCWD, os.fsencode(str(a)), _AT_FDCWD, os.fsencode(str(b)), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def sweep_leftovers(final_dir: Path) -> None:
    """What a killed run left beside ``final_dir``, dealt with in one line each: an interrupted publish's
    ``.NAME.old-*`` is put back when ``final_dir`` is missing (else deleted: the publish had finished), and a
    ``.NAME.tmp-*`` (a half-written output, or the version a finished swap replaced) is deleted. The caller holds
    the output's lock, so no live run's files are touched."""
    final_dir = Path(final_dir)
    for old in sorted(final_dir.parent.glob(f".{final_dir.name}.old-*")):
        if not final_dir.exists():
            os.replace(old, final_dir)
            print(f"{final_dir}: restored from {old.name}, where an interrupted run left it while publishing its "
                  "replacement", flush=True)
        else:
            shutil.rmtree(old, ignore_errors=True)
            print(f"{final_dir}: removed {old.name}, the version a finished publish replaced", flush=True)
    for tmp in sorted(final_dir.parent.glob(f".{final_dir.name}.tmp-*")):
        shutil.rmtree(tmp, ignore_errors=True)
        print(f"{final_dir}: removed {tmp.name}, left by a run killed while writing it", flush=True)


@contextlib.contextmanager
def atomic_dir(final_dir: str | Path, force: bool = True, kind: str | None = None) -> Iterator[Path]:
    """Yield a temp directory beside ``final_dir``; on success it is synced and renamed into place. The caller
    holds ``final_dir``'s lock (``exclusive``): leftovers of killed runs beside it are swept first.

    On any failure the temp directory is removed and an existing ``final_dir`` is untouched.
    With ``force=False`` an existing ``final_dir`` is refused before any work is done. With a ``kind``
    (a key of KINDS) the directory is marked as that stage's, and an existing ``final_dir`` that another
    stage (or no stage) wrote is refused even with ``force``.
    """
    final_dir = Path(final_dir)
    if final_dir.parent.is_dir():
        sweep_leftovers(final_dir)
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


# --- Which stage wrote an output directory -------------------------------------------------------------------

OWNER_FILE = ".sft-pipeline-owner"
"""Written into every directory a stage creates: JSON naming the stage kind that owns it."""
KINDS = {"prepare": "a prepared corpus (02_prepare_sft_corpus.py)",
         "prepare_text": "a prepared text corpus (01_prepare_text_corpus.py)",
         "pretrain": "a pre-training run (01_pretrain.py)",
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
    if not os.access(path, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {path}: this user may not write in it (read-only); nothing was written — make it "
                        f"writable (chmod u+w) or choose another {flag}")
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
