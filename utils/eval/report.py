"""The evaluation report: eval_report.json (for the pipeline), eval_report.md (for people), PNG plots,
predictions.jsonl (every eval-set answer, for error analysis) and the table printed at the end."""
from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from utils.common.markdown import markdown_table
from utils.common.publish import write_json_atomic, write_text_atomic
from utils.eval.evaluation import SCALARS, ModelEval
from utils.eval.metrics import difference

FORMAT_VERSION = 1
DEFINITIONS = {
    "val_loss": "mean next-token cross-entropy (nats) over the supervised tokens of the val shards, "
                "token-weighted over all sources (the training loss, packed, no padding)",
    "val_ppl": "exp(val_loss)",
    "exact_match": "share of eval-set prompts whose response, trimmed, equals the reference AND that "
                   "ended with a stop token (a truncated response is wrong)",
    "exact_match_rephrased": "exact match on --rephrased_set: the same task families asked in wordings that "
                             "training never used (following the instruction, not recalling its wording)",
    "format_compliance": "share of eval-set responses that ended with the template's stop token "
                         "(end-of-turn or eos) within max_new_tokens",
    "success_rate": "share of eval-set responses that are non-empty and ended with a stop token",
    "tool_call_parse_rate": "share of the held-out assistant turns that call tools (val split of --data_dirs) whose "
                            "response ended with a stop token and holds only well-formed <tool_call> JSON calls",
    "tool_call_name_match": "share of those turns whose response calls the reference's functions, in order",
    "tool_call_accuracy": "share of those turns whose calls equal the reference's: function names and arguments "
                          "(equal as JSON values, key order ignored)",
    "retention_loss": "mean next-token cross-entropy (nats) over fixed windows of the raw-text retention corpus",
    "retention_ppl": "exp(retention_loss): lower = more of the pre-training domain kept",
    "copy_loss_first": "loss on the first showing of random token runs (utils/model/probes.py): chance level",
    "copy_loss_second": "loss on the second showing of the same runs: far below copy_loss_first when the model "
                        "copies from its context (induction heads), about equal when it cannot",
    "distinct_1": "distinct words / all words, pooled over every response (eval set + eval prompts)",
    "distinct_2": "distinct word bigrams / all bigrams, pooled over every response",
    "repetition_3": "mean share of a response's word 3-grams that repeat an earlier 3-gram of it (0 = no loops)",
    "prompt_overlap": "mean share of a response's distinct words found in its prompt (crude relevance; rewards "
                      "copying, blind to paraphrase)",
    "response_logprob": "coherence: mean log-likelihood per token (nats) of the model's own finished responses, "
                        "conditioned on the prompt, scored like the training loss (response text + end-of-turn). "
                        "Measures the model's confidence, not truth; greedy decoding and loops inflate it; "
                        "comparable only between models sharing a tokenizer",
    "response_length": "generated tokens per response, stop token excluded (all responses)",
}
ROWS = SCALARS + ("response_length.mean", "response_length.p90")


def build_report(setup: dict, settings: dict, tuned: ModelEval, base: ModelEval | None,
                 paths: dict, total_s: float) -> dict:
    """The JSON report: per model metrics under "tuned"/"base", and tuned − base under "difference"."""
    timing = {"tuned": tuned.timing_s, "total": total_s}
    if base is not None:
        timing["base"] = base.timing_s
    return {
        "format_version": FORMAT_VERSION,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **paths,
        "setup": setup,
        "settings": settings,
        "tuned": tuned.metrics,
        "base": base.metrics if base is not None else None,
        "difference": difference(tuned.metrics, base.metrics) if base is not None else None,
        "timing_s": timing,
        "definitions": DEFINITIONS,
    }


def write_report(out_dir: Path, report: dict, tuned: ModelEval, base: ModelEval | None) -> list[str]:
    """Every report file into ``out_dir`` (each through a temp file and a rename); returns their names."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = [p.name for p in (plot_accuracy(report, out_dir / "accuracy_by_family.png"),
                              plot_lengths(tuned.lengths, base.lengths if base else None,
                                           out_dir / "response_lengths.png"),
                              plot_losses(report, out_dir / "loss_by_source.png")) if p is not None]
    files = ["eval_report.json", "eval_report.md"] + (["predictions.jsonl"] if tuned.predictions else []) + plots
    report["files"] = files
    if tuned.predictions:
        write_text_atomic(out_dir / "predictions.jsonl", _predictions(tuned, base))
    write_text_atomic(out_dir / "eval_report.md", render_markdown(report))
    write_json_atomic(out_dir / "eval_report.json", report)
    return files


def _predictions(tuned: ModelEval, base: ModelEval | None) -> str:
    lines = []
    for k, row in enumerate(tuned.predictions):
        keep = ("response", "finished", "num_tokens", "correct")
        record = {"index": k, **{f: row[f] for f in ("task", "prompt", "reference")},
                  "tuned": {f: row[f] for f in keep}}
        if base is not None:
            record["base"] = {f: base.predictions[k][f] for f in keep}
        lines.append(json.dumps(record, ensure_ascii=False))
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------- text
def lookup(metrics: dict | None, dotted: str):
    value = metrics
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:,.1f}" if abs(value) >= 100 else f"{value:.4f}"


def metric_rows(report: dict) -> list[list[str]]:
    """The headline metrics, one row per ``ROWS`` key: metric, tuned, base, tuned − base ("-" where absent)."""
    return [[key, fmt(lookup(report["tuned"], key)), fmt(lookup(report.get("base"), key)),
             fmt(lookup(report.get("difference"), key))] for key in ROWS]


def family_header(base: bool, rephrased: bool) -> list[str]:
    return (["family", "n", "exact match"] + (["exact match, new wording"] if rephrased else [])
            + ["format compliance"] + (["base exact match", "base format"] if base else []))


def family_rows(report: dict, base: bool, rephrased: bool) -> list[list]:
    """Per task family: n, exact match (and on the new wordings), format compliance; the base's beside them."""
    reworded = report["tuned"].get("per_family_rephrased") or {}
    others = (report.get("base") or {}).get("per_family") or {}
    rows = []
    for name, row in (report["tuned"].get("per_family") or {}).items():
        cells = [name, row.get("n"), fmt(row.get("exact_match"))]
        cells += [fmt(reworded.get(name, {}).get("exact_match"))] if rephrased else []
        cells.append(fmt(row.get("format_compliance")))
        if base:
            cells += [fmt(others.get(name, {}).get("exact_match")), fmt(others.get(name, {}).get("format_compliance"))]
        rows.append(cells)
    return rows


def source_header(base: bool) -> list[str]:
    return ["source", "tokens", "loss", "ppl"] + (["base loss", "base ppl"] if base else [])


def source_rows(report: dict, base: bool) -> list[list[str]]:
    """Validation loss and perplexity per source (retention of the replay/general text shows here); the base's."""
    others = (report.get("base") or {}).get("val_per_source") or {}
    return [[name, fmt(row.get("tokens")), fmt(row.get("loss")), fmt(row.get("ppl"))]
            + ([fmt(others.get(name, {}).get("loss")), fmt(others.get(name, {}).get("ppl"))] if base else [])
            for name, row in (report["tuned"].get("val_per_source") or {}).items()]


def render_table(report: dict) -> str:
    """The short table printed at the end: metric, tuned, base, tuned − base."""
    has_base = report["base"] is not None
    head = f"{'metric':<22}{'tuned':>12}" + (f"{'base':>12}{'tuned-base':>12}" if has_base else "")
    lines = [head, "-" * len(head)]
    for key, tuned, base, diff in metric_rows(report):
        lines.append(f"{key:<22}{tuned:>12}" + (f"{base:>12}{diff:>12}" if has_base else ""))
    return "\n".join(lines)


def render_markdown(report: dict) -> str:
    has_base = report["base"] is not None
    out = [f"# Evaluation of {report['model_path']}", "",
           f"Created {report['created_at']}; base model: {report.get('base_model_path') or 'none'}.", "",
           "## Setup", ""]
    out += markdown_table(["item", "value", "from"], [[k, v["value"], v["from"]] for k, v in report["setup"].items()])
    out += ["", "## Metrics", "", "```", render_table(report), "```", ""]
    out += _family_table(report, has_base) + _source_table(report, has_base) + _samples(report, has_base)
    out += ["## Plots", ""] + [f"![{f}]({f})" for f in report.get("files", []) if f.endswith(".png")]
    out += ["", "## Definitions", ""] + [f"- **{k}**: {v}" for k, v in DEFINITIONS.items()]
    timing = report["timing_s"]
    phases = {model: {k: round(v, 1) for k, v in parts.items()} for model, parts in timing.items() if model != "total"}
    out += ["", f"Took {timing['total']:.1f} s; per phase (s): {json.dumps(phases, sort_keys=True)}", ""]
    return "\n".join(out)


def _family_table(report: dict, has_base: bool) -> list[str]:
    if not report["tuned"].get("per_family"):
        return []
    rephrased = bool(report["tuned"].get("per_family_rephrased"))
    table = markdown_table(family_header(has_base, rephrased), family_rows(report, has_base, rephrased))
    return ["## Instruction following per task family", ""] + table + [""]


def _source_table(report: dict, has_base: bool) -> list[str]:
    if not report["tuned"].get("val_per_source"):
        return []
    table = markdown_table(source_header(has_base), source_rows(report, has_base))
    return ["## Validation loss per source", ""] + table + [""]


def _samples(report: dict, has_base: bool) -> list[str]:
    samples = report["tuned"].get("samples") or []
    if not samples:
        return []
    out = ["## Eval prompts", ""]
    for k, sample in enumerate(samples):
        out += [f"**Prompt:** {_inline(sample['prompt'])}", "", f"- tuned{_mark(sample)}: `{_inline(sample['response'])}`"]
        if has_base:
            other = report["base"]["samples"][k]
            out.append(f"- base{_mark(other)}: `{_inline(other['response'])}`")
        out.append("")
    return out


def _mark(sample: dict) -> str:
    return "" if sample["finished"] else " (no stop token)"


def _inline(text: str) -> str:
    """One line of Markdown that a backtick or newline in model output cannot break."""
    return text.replace("`", "'").replace("\n", " ⏎ ") if text.strip() else "(empty)"


# ---------------------------------------------------------------------- plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grouped_bars(ax, labels: list[str], series: dict[str, list], ylabel: str) -> None:
    width = 0.8 / max(1, len(series))
    for k, (name, values) in enumerate(series.items()):
        xs = [i + (k - (len(series) - 1) / 2) * width for i in range(len(labels))]
        ax.bar(xs, [v if v is not None else 0 for v in values], width, label=name)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.legend()


def _models(report: dict) -> dict[str, dict]:
    return {"tuned": report["tuned"], **({"base": report["base"]} if report["base"] is not None else {})}


def plot_accuracy(report: dict, out_png: Path) -> Path | None:
    """Exact match per task family (and overall), tuned vs base."""
    families = list(report["tuned"].get("per_family") or {})
    if not families:
        return None
    plt = _pyplot()
    labels = families + ["overall"]
    series = {name: [lookup(m, f"per_family.{f}.exact_match") for f in families] + [m.get("exact_match")]
              for name, m in _models(report).items()}
    fig, ax = plt.subplots(figsize=(max(6, 0.6 * len(labels) + 2), 4))
    _grouped_bars(ax, labels, series, "exact match")
    ax.set_ylim(0, 1.05)
    ax.set_title("Instruction following: exact match per task family")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_lengths(tuned: list[int], base: list[int] | None, out_png: Path) -> Path | None:
    """Histogram of response lengths in tokens (shared bins, so the two models compare)."""
    if not tuned:
        return None
    plt = _pyplot()
    top = max(tuned + (base or []))
    bins = list(range(0, top + 2, max(1, (top + 1) // 30 + 1)))
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(tuned, bins=bins, alpha=0.6, label="tuned")
    if base:
        ax.hist(base, bins=bins, alpha=0.6, label="base")
    ax.set_xlabel("response length (tokens, stop token excluded)")
    ax.set_ylabel("responses")
    ax.set_title("Response length distribution")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png


def plot_losses(report: dict, out_png: Path) -> Path | None:
    """Validation loss and perplexity per source, and on the retention corpus, tuned vs base."""
    sources = list(report["tuned"].get("val_per_source") or {})
    retention = report["tuned"].get("retention_loss") is not None
    if not sources and not retention:
        return None
    plt = _pyplot()
    labels = sources + (["retention corpus"] if retention else [])
    fig, axes = plt.subplots(1, 2, figsize=(max(8, 1.2 * len(labels) + 5), 4))
    for ax, (key, ylabel) in zip(axes, (("loss", "loss (nats/token)"), ("ppl", "perplexity"))):
        series = {name: [lookup(m, f"val_per_source.{s}.{key}") for s in sources]
                  + ([m.get(f"retention_{key}")] if retention else []) for name, m in _models(report).items()}
        _grouped_bars(ax, labels, series, ylabel)
    axes[0].set_title("Loss per source")
    axes[1].set_title("Perplexity per source")
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
    return out_png
