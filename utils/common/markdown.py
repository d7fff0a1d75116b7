"""Markdown tables, the one way the data card and the evaluation, benchmark and pipeline reports write them."""
from __future__ import annotations

from typing import Iterable, Sequence


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], align: str = "") -> list[str]:
    """A table as lines: header, separator, one line per row (cells through ``str``).

    ``align`` has one letter per column, ``l`` or ``r`` (right-aligned, ``---:``); empty: all left.
    """
    separators = ["---:" if a == "r" else "---" for a in (align or "l" * len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(separators) + "|"]
    return lines + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
