"""The Evaluation tab: the reports scripts/04_evaluate_sft.py wrote (eval_report.json/.md, plots,
predictions.jsonl): metrics tuned vs base, exact match and format per task family, retention (validation loss
per source), the plots, and generations side by side."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

from utils.common.errors import UserError
from utils.eval import report as tables
from utils.eval.report import lookup

METRIC_HEADERS = ["metric", "tuned", "base", "tuned - base"]
FAMILY_HEADERS = tables.family_header(base=True, rephrased=False)
SOURCE_HEADERS = tables.source_header(base=True)
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
    """The report's headline metrics (the table 04_evaluate_sft.py prints) that it measured: tuned, base,
    difference."""
    return [row for row in tables.metric_rows(report) if lookup(report["tuned"], row[0]) is not None]


def family_rows(report: dict) -> list[list]:
    """Per task family: n, exact match and format compliance, tuned and base (the Markdown report's rows)."""
    return tables.family_rows(report, base=True, rephrased=False)


def source_rows(report: dict) -> list[list]:
    """Validation loss per source (retention of the replay/general text shows here), tuned and base (the
    Markdown report's rows)."""
    return tables.source_rows(report, base=True)


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
