"""The Evaluation tab: the reports scripts/04_evaluate_sft.py wrote (eval_report.json/.md, plots,
predictions.jsonl): metrics tuned vs base, exact match and format per task family, retention (validation loss
per source), the plots, and generations side by side."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from utils.common.errors import UserError
from utils.eval.report import ROWS, fmt, lookup

METRIC_HEADERS = ["metric", "tuned", "base", "tuned - base"]
FAMILY_HEADERS = ["family", "n", "exact match", "format", "base exact match", "base format"]
SOURCE_HEADERS = ["source", "tokens", "loss", "base loss", "ppl", "base ppl"]
GENERATION_HEADERS = ["task", "prompt", "reference", "tuned", "tuned correct", "base", "base correct"]


def find_reports(root: Path, max_depth: int = 5) -> list[Path]:
    """Every directory under ``root`` holding eval_report.json, sorted by path."""
    root = Path(root)
    found = []
    if not root.is_dir():
        return found
    for depth in range(1, max_depth + 1):
        found += [p.parent for p in root.glob("/".join(["*"] * depth) + "/eval_report.json")]
    return sorted(set(found))


def load_report(report_dir: Path) -> dict:
    path = Path(report_dir) / "eval_report.json"
    try:
        report = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path}: not found (deleted?); refresh the list") from None
    except (OSError, ValueError, RecursionError) as err:
        raise UserError(f"{path}: unreadable ({str(err)[:120]})") from None
    if not isinstance(report, dict) or not isinstance(report.get("tuned"), dict):
        raise UserError(f"{path}: not an evaluation report (no 'tuned' metrics)")
    return report


def metric_rows(report: dict) -> list[list[str]]:
    """The report's headline metrics (the table 04_evaluate_sft.py prints): tuned, base, difference."""
    return [[key, fmt(lookup(report["tuned"], key)), fmt(lookup(report.get("base"), key)),
             fmt(lookup(report.get("difference"), key))] for key in ROWS
            if lookup(report["tuned"], key) is not None]


def family_rows(report: dict) -> list[list]:
    """Per task family: n, exact match and format compliance, tuned and base."""
    base = (report.get("base") or {}).get("per_family") or {}
    return [[name, row.get("n"), fmt(row.get("exact_match")), fmt(row.get("format_compliance")),
             fmt(base.get(name, {}).get("exact_match")), fmt(base.get(name, {}).get("format_compliance"))]
            for name, row in (report["tuned"].get("per_family") or {}).items()]


def source_rows(report: dict) -> list[list]:
    """Validation loss per source (retention of the replay/general text shows here), tuned and base."""
    base = (report.get("base") or {}).get("val_per_source") or {}
    return [[name, row.get("tokens"), fmt(row.get("loss")), fmt(base.get(name, {}).get("loss")),
             fmt(row.get("ppl")), fmt(base.get(name, {}).get("ppl"))]
            for name, row in (report["tuned"].get("val_per_source") or {}).items()]


def plots(report_dir: Path) -> list[str]:
    """The report's PNG plots that exist, in the report's order."""
    report_dir = Path(report_dir)
    names = [f for f in (load_report(report_dir).get("files") or []) if f.endswith(".png")]
    return [str(report_dir / n) for n in names if (report_dir / n).is_file()]


def generations(report_dir: Path, limit: int = 50, task: str = "") -> list[list]:
    """Eval-set answers of tuned and base side by side (predictions.jsonl), optionally of one task family."""
    path = Path(report_dir) / "predictions.jsonl"
    rows: list[list] = []
    if not path.is_file():
        return rows
    with open(path, encoding="utf-8") as handle:
        for line in itertools.islice(handle, 100_000):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a damaged line is not an answer; the others still show
            if not isinstance(record, dict) or (task and record.get("task") != task):
                continue
            tuned, base = record.get("tuned") or {}, record.get("base") or {}
            rows.append([record.get("task", ""), record.get("prompt", ""), record.get("reference", ""),
                         tuned.get("response", ""), _yes(tuned.get("correct")), base.get("response", ""),
                         _yes(base.get("correct"))])
            if len(rows) >= limit:
                break
    return rows


def header_markdown(report: dict, report_dir: Path) -> str:
    return (f"### {report_dir}\n\nmodel `{report.get('model_path', '?')}`; base "
            f"`{report.get('base_model_path') or 'none'}`; created {report.get('created_at', '?')}")


def _yes(value) -> str:
    return "" if value is None else "yes" if value else "no"
