"""User-facing failures: one clear line, non-zero exit, no traceback."""
from __future__ import annotations

import sys
from typing import Callable, Sequence


class UserError(Exception):
    """A failure the user can fix (bad config, bad data, wrong tokenizer, missing file).

    The message names what and where (file, line, field) and what to do.
    """


EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run a script's main(); a UserError becomes one line on stderr and exit code 2."""
    try:
        return main(argv)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr, flush=True)
        return EXIT_USER_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return EXIT_INTERRUPTED
