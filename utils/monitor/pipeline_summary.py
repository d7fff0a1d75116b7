"""The closing table of a pipeline run: metrics of each model side by side, and where everything is."""
from __future__ import annotations

import json
from pathlib import Path

from utils.common.errors import UserError
from utils.common.markdown import markdown_table

ROWS = (
    ("validation loss", "val_loss", "{:.4f}"),
    ("validation perplexity", "val_ppl", "{:,.2f}"),
    ("held-out exact match", "exact_match", "{:.1%}"),
    ("held-out exact match, new wording", "exact_match_rephrased", "{:.1%}"),
    ("format compliance (ends with end-of-turn)", "format_compliance", "{:.1%}"),
    ("domain perplexity (retention)", "retention_ppl", "{:,.2f}"),
)


def read_column(spec: str) -> tuple[str, dict]:
    """``LABEL=path/eval_report.json:tuned`` → (label, that model's metrics)."""
    label, _, rest = spec.partition("=")
    path, _, side = rest.rpartition(":")
    if not label or side not in ("tuned", "base") or not path:
        raise UserError(f"--column {spec!r}: expected LABEL=PATH/eval_report.json:tuned|base")
    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read the evaluation report ({err}); run `make sft-eval` first") from None
    if not report.get(side):
        raise UserError(f"{path}: has no '{side}' model (evaluate with --base_model_path)")
    return label, report[side]


def _cell(metrics: dict, key: str, fmt: str) -> str:
    value = metrics.get(key)
    return "-" if value is None else fmt.format(value)


def render(columns: list[tuple[str, dict]], artefacts: list[tuple[str, str]]) -> str:
    """A markdown table of the metrics, then the artefact list."""
    lines = markdown_table(["metric"] + [label for label, _ in columns],
                           [[title] + [_cell(m, key, fmt) for _, m in columns] for title, key, fmt in ROWS])
    if artefacts:
        lines += [""] + markdown_table(["artefact", "path"], [
            [name, f"`{path}`{'' if Path(path).exists() else ' (missing)'}"] for name, path in artefacts])
    return "\n".join(lines) + "\n"
