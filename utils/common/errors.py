"""User-facing failures: one clear line, non-zero exit, no traceback."""
from __future__ import annotations

import errno
import sys
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
        print(f"error: {where}{err.strerror}; free disk space or fix permissions, then run again "
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
