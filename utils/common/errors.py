"""User-facing failures: one clear line, non-zero exit, no traceback."""
from __future__ import annotations

import errno
import os
import sys
from pathlib import Path
from typing import Callable, Sequence


class UserError(Exception):
    """A failure the user can fix (bad config, bad data, wrong tokenizer, missing file).

    The message names what and where (file, line, field) and what to do.
    """


class Stopped(Exception):
    """A signal stopped the run after writing a checkpoint: one line, exit 128 + the signal number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.exit_code = 128 + signum


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130
# What the machine, not the code, got wrong: full disk or quota, read-only or forbidden target, I/O fault.
ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EIO}


def check_readable(path, what: str) -> None:
    """A ``what`` at ``path`` (a file, or a directory and the files in it) that this user may not read is one
    line saying so: libraries report an unreadable file as missing ("No such file or directory")."""
    path = Path(path)
    try:
        os.stat(path)
        if path.is_dir():
            for entry in path.iterdir():
                if entry.is_file():
                    open(entry, "rb").close()
        elif path.is_file():
            open(path, "rb").close()
    except FileNotFoundError:
        return  # the caller's own check names a missing path
    except PermissionError as err:
        raise UserError(f"{err.filename or path}: permission denied reading the {what}; make it readable for this "
                        "user (e.g. chmod -R a+rX) or copy it to a directory you can read") from None


def one_line(err: BaseException) -> str:
    """``Type: message`` squeezed onto one line (library messages often span several)."""
    return f"{type(err).__name__}: {' '.join(str(err).split())}"[:500]


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a script's main(); a UserError (or a full disk, a read-only target) becomes one line and exit 2."""
    try:
        return main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except OSError as err:
        if err.errno not in ENVIRONMENT_ERRNOS:
            raise
        where = f"{err.filename}: " if err.filename else ""
        fix = ("fix its permissions or choose another path" if err.errno in (errno.EACCES, errno.EPERM, errno.EROFS)
               else "free disk space or fix permissions")
        print(f"error: {where}{err.strerror}; {fix}, then run again "
              "(training continues from its last checkpoint with --resume_from_checkpoint auto)",
              file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except Stopped as err:
        if str(err):  # the main process speaks for all ranks
            print(f"stopped: {err}", file=sys.stderr, flush=True)
        return err.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
