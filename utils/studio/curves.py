"""Live curves: metrics.jsonl read incrementally (only the bytes added since the last refresh), and plots.

A training run appends to metrics.jsonl while the page is open; a refresh reads what was appended, keeps a
half-written last line for the next refresh, skips a damaged line with a message (never an exception), and
starts over when the file was replaced or cut (a resumed run drops the records after its checkpoint).
"""
from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

PANELS = (("loss", "train loss"), ("eval/loss", "eval loss"), ("lr", "learning rate"),
          ("grad_norm", "grad norm"), ("tokens_per_s", "tokens/s"))
"""The keys the Runs tab plots, and their titles; eval loss per source is drawn beside eval/loss."""


@dataclass
class MetricsTail:
    """The records of one metrics.jsonl, brought up to date by ``refresh``."""

    path: Path
    records: list[dict] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    offset: int = 0
    line_number: int = 0
    _inode: int | None = None
    _partial: bytes = b""

    def refresh(self, max_bytes: int = 8 << 20) -> int:
        """Read what was appended since the last call (at most ``max_bytes``); return the new record count."""
        try:
            stat = os.stat(self.path)
        except OSError:
            if self.records or self.offset:
                self.messages.append(f"{self.path}: no longer there (deleted or moved)")
                self._reset()
            return 0
        if stat.st_ino != self._inode or stat.st_size < self.offset:
            self._reset()
            self._inode = stat.st_ino
        if stat.st_size == self.offset:
            return 0
        try:
            with open(self.path, "rb") as handle:
                handle.seek(self.offset)
                chunk = handle.read(max_bytes)
        except OSError as err:
            self.messages.append(f"{self.path}: unreadable ({err.strerror})")
            return 0
        self.offset += len(chunk)
        data = self._partial + chunk
        lines = data.split(b"\n")
        self._partial = lines.pop()  # the last piece has no newline yet: the writer may be mid-line
        before = len(self.records)
        for raw in lines:
            self.line_number += 1
            self._parse(raw)
        return len(self.records) - before

    def _parse(self, raw: bytes) -> None:
        if not raw.strip():
            return
        try:
            record = json.loads(raw)
        except (ValueError, RecursionError) as err:
            self.messages.append(f"{self.path.name} line {self.line_number}: damaged ({str(err)[:80]}); skipped")
            return
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            self.messages.append(f"{self.path.name} line {self.line_number}: not a metrics record (no integer "
                                 "step); skipped")
            return
        self.records.append(record)

    def _reset(self) -> None:
        self.records, self.offset, self.line_number, self._partial, self._inode = [], 0, 0, b"", None

    def series(self, key: str) -> tuple[list[int], list[float]]:
        """(steps, values) of ``key``, finite numbers only."""
        steps, values = [], []
        for record in self.records:
            value = record.get(key)
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                steps.append(record["step"])
                values.append(float(value))
        return steps, values

    def keys(self) -> list[str]:
        """Every numeric key seen, sorted."""
        found = {k for r in self.records for k, v in r.items() if isinstance(v, (int, float)) and k != "step"}
        return sorted(found)

    def source_losses(self) -> list[str]:
        """The per-source eval loss keys (``eval/<source>/loss``)."""
        return [k for k in self.keys() if k.startswith("eval/") and k.endswith("/loss") and k.count("/") == 2]

    def latest(self) -> dict:
        """The last value of every key."""
        out: dict = {}
        for record in self.records:
            out.update(record)
        return out


class CurveCache:
    """One MetricsTail per run path, kept between refreshes so each reads only new bytes."""

    def __init__(self) -> None:
        self.tails: dict[str, MetricsTail] = {}

    def get(self, run_dir: Path) -> MetricsTail:
        key = str(run_dir)
        if key not in self.tails:
            self.tails[key] = MetricsTail(Path(run_dir) / "metrics.jsonl")
        tail = self.tails[key]
        tail.refresh()
        return tail


def plot_runs(tails: dict[str, MetricsTail]):
    """A matplotlib figure: one panel per PANELS key plus per-source eval loss, one line per run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): no display needed

    fig, axes = plt.subplots(2, 3, figsize=(12, 6), dpi=80)
    flat = list(axes.flat)
    for ax, (key, title) in zip(flat, PANELS):
        ax.set_title(title, fontsize=10)
        for name, tail in tails.items():
            steps, values = tail.series(key)
            if steps:
                ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=_short(name))
        ax.set_xlabel("step", fontsize=8)
    ax = flat[len(PANELS)]
    ax.set_title("eval loss per source", fontsize=10)
    for name, tail in tails.items():
        for key in tail.source_losses():
            steps, values = tail.series(key)
            ax.plot(steps, values, marker=".", label=f"{_short(name)}: {key.split('/')[1]}")
    for ax in flat:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    plt.close(fig)  # the page draws it; pyplot must not keep every refresh's figure alive
    return fig


def _short(name: str) -> str:
    parts = Path(name).parts
    return "/".join(parts[-2:]) if len(parts) > 1 else name


def latest_rows(tails: dict[str, MetricsTail]) -> list[list]:
    """Per run: step, train loss, eval loss, lr, tokens/s of its last records."""
    rows = []
    for name, tail in tails.items():
        last = tail.latest()
        rows.append([name, last.get("step", ""), _num(last.get("loss")), _num(last.get("eval/loss")),
                     _num(last.get("lr")), _num(last.get("tokens_per_s"))])
    return rows


def _num(value) -> str:
    if not isinstance(value, (int, float)):
        return ""
    return f"{value:.4g}"
