"""The benchmark's report: a Markdown table between markers in docs/BENCHMARKS.md and a PNG bar chart.

Only the text between ``BEGIN`` and ``END`` is rewritten, so the hand-written parts of the file (the
levers and what they were measured to give) survive a new run.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from utils.common.markdown import markdown_table

BEGIN = "<!-- bench:begin (written by scripts/benchmark_throughput.py) -->"
END = "<!-- bench:end -->"
LABELS = {"ours": "this trainer", "trl": "TRL padding-free", "trl_packed": "TRL BFD packing",
          "trl_bf16": "TRL padding-free bf16", "hf": "HF Trainer (pad longest)"}
TRL_KINDS = ("trl", "trl_packed", "trl_bf16")


def matmul_peaks(results: dict) -> dict[str, float]:
    """Peak FLOP/s per precision; results written before bf16 peaks were measured hold fp32 only."""
    return results.get("matmul_peaks") or {"fp32": results["matmul_peak_flops"]}


def summarize(results: dict) -> list[dict]:
    """One row per (case, trainer): medians over repeats, MFU, and ratios against TRL's best and HF."""
    peaks = matmul_peaks(results)
    rows = []
    for case in dict.fromkeys(r["case"] for r in results["runs"]):
        runs = [r for r in results["runs"] if r["case"] == case]
        for trainer in dict.fromkeys(r["trainer"] for r in runs):
            mine = [r for r in runs if r["trainer"] == trainer]
            med = lambda key: statistics.median(r["window"][key] for r in mine)  # noqa: E731
            losses = [r["window"]["mean_loss"] for r in mine if r["window"]["mean_loss"] is not None]
            precision = mine[0].get("precision", "fp32")
            rows.append({"case": case, "trainer": trainer, "supervised_per_s": med("supervised_per_s"),
                         "precision": precision,
                         "supervised_per_cpu_s": med("supervised_per_cpu_s"),
                         "micro": mine[0].get("micro_examples"),
                         "tokens_per_s": med("tokens_per_s"), "padding": med("padding_fraction"),
                         "rss_mb": statistics.median(r["peak_rss_mb"] for r in mine),
                         "gpu_mb": max((r.get("peak_gpu_mb") or 0) for r in mine) or None,
                         "loss": statistics.median(losses) if losses else None,
                         "mfu": med("model_flops_per_s") / peaks.get(precision, peaks["fp32"]),
                         "repeats": len(mine),
                         "notes": sorted({n for r in mine for n in r.get("notes", [])})})
    for row in rows:
        peers = [r for r in rows if r["case"] == row["case"]]
        trl = [r for r in peers if r["trainer"] in TRL_KINDS]
        hf = [r for r in peers if r["trainer"] == "hf"]
        best_trl = max(trl, key=lambda r: r["supervised_per_s"]) if trl else None
        row["vs_trl"] = row["supervised_per_s"] / best_trl["supervised_per_s"] if best_trl else None
        row["vs_trl_cpu"] = row["supervised_per_cpu_s"] / best_trl["supervised_per_cpu_s"] if best_trl else None
        row["vs_hf"] = row["supervised_per_s"] / hf[0]["supervised_per_s"] if hf else None
        # loss against TRL padding-free in the same precision: it sees the same examples in the same
        # steps (BFD regroups them)
        same = next((r for r in trl if r["trainer"] in ("trl", "trl_bf16") and r["precision"] == row["precision"]),
                    next((r for r in trl if r["trainer"] == "trl"), best_trl))
        row["loss_vs_trl"] = (row["loss"] / same["loss"] - 1) if same and row["loss"] and same["loss"] else None
    return rows


def _fmt(value, spec: str, none: str = "-") -> str:
    return none if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    header = ["case", "trainer", "micro-batch", "supervised tok/s", "per CPU-s", "all tok/s", "padding",
              "peak RSS MiB", "loss (same steps)", "precision", "MFU", "vs best TRL", "(CPU-s)", "vs HF"]
    cells = []
    for r in rows:
        loss = _fmt(r["loss"], ".4f")
        if r["loss_vs_trl"] is not None and r["trainer"] not in TRL_KINDS:
            loss += f" ({r['loss_vs_trl']:+.2%})"
        cells.append([r["case"], LABELS.get(r["trainer"], r["trainer"]), _fmt(r["micro"], "d"),
                      f"{r['supervised_per_s']:,.0f}", f"{r['supervised_per_cpu_s']:,.0f}", f"{r['tokens_per_s']:,.0f}",
                      f"{r['padding']:.1%}", f"{r['rss_mb']:,.0f}", loss, r.get("precision", "fp32"),
                      f"{r['mfu']:.1%}", _times(r["vs_trl"]), _times(r["vs_trl_cpu"]), _times(r["vs_hf"])])
    return "\n".join(markdown_table(header, cells, align="llrrrrrrrlrrrr"))


def _times(ratio) -> str:
    return "-" if ratio is None else f"{ratio:.2f}x"


def prep_table(prep: dict | None) -> str:
    if not prep:
        return "(data preparation race skipped: --no_prep)"
    ours, trl = prep["ours"], prep["trl"]
    rows = [[name, side["num_proc"], f"{side['examples']:,}", f"{side['seconds']:.1f}", f"{side['examples_per_s']:,.0f}",
             f"{side['cpu_s']:.1f}" if "cpu_s" in side else "-",
             f"{side['examples_per_cpu_s']:,.0f}" if "cpu_s" in side else "-"]
            for name, side in (("02_prepare_sft_corpus.py", ours), ("TRL SFTTrainer tokenization", trl))]
    table = markdown_table(["preparation", "processes", "examples", "seconds", "examples/s", "CPU s",
                            "examples per CPU-s"], rows, align="lrrrrrr")
    line = f"speed-up: {prep['speedup']:.2f}x (wall clock)"
    if "cpu_s" in ours and "cpu_s" in trl:
        line += f", {ours['examples_per_cpu_s'] / trl['examples_per_cpu_s']:.2f}x (per CPU-second)"
    return "\n".join(table) + "\n\n" + line


def render(results: dict, chart: str) -> str:
    m = results["machine"]
    s = results["settings"]
    versions = ", ".join(f"{k} {v}" for k, v in m["versions"].items())
    notes = "".join(f"\n- {n}" for n in results["notes"])
    rows = summarize(results)
    peaks_text = ", ".join(f"{name} {flops / 1e9:,.0f} GFLOP/s" for name, flops in matmul_peaks(results).items())
    row_notes = "".join(f"\n- {r['case']} / {LABELS.get(r['trainer'], r['trainer'])}: {n}"
                        for r in rows for n in r["notes"])
    return f"""{BEGIN}
## Latest run

`{results['command']}`

Machine: {m['cpu']}, {m['cores']} cores ({m['torch_threads']} torch threads){', GPU ' + m['gpu'] if m['gpu'] else ''};
Python {m['python']}; {versions}.
Matmul peak measured in this run on the {results.get('peak_device', 'cpu').upper()} (the MFU denominator, in the
precision of each run): {peaks_text}.
{s['steps']} optimizer steps per run, the first {s['warmup']} not timed; {s['repeats']} run(s) per trainer and case
(medians shown); tokens/s are per wall-clock second over the timed steps; "per CPU-s" divides by the
process CPU time instead (all its threads), which other jobs on a shared machine disturb far less.
Micro-batch: examples per forward/backward (gradient accumulation makes up the step). Loss: the mean
training loss over the timed steps; in brackets its difference from TRL padding-free in the same precision,
which trains on the same examples in the same steps (TRL's BFD packing regroups them, so its loss differs a
little). MFU: model FLOPs per second over the matmul peak of the run's precision.

{table(rows)}

![supervised tokens per second]({chart})

### Data preparation

{prep_table(results['prep'])}
{notes}{row_notes}
{END}"""


def write_report(results: dict, report: Path) -> str:
    """Write the chart and the generated section of ``report``; returns the table for the console."""
    chart = report.with_name("benchmarks.png")
    plot(summarize(results), chart, results["machine"]["cpu"])
    section = render(results, chart.name)
    text = report.read_text(encoding="utf-8") if report.exists() else "# Benchmarks\n\n" + BEGIN + "\n" + END + "\n"
    if BEGIN in text and END in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.rstrip() + "\n\n" + section + "\n"
    report.parent.mkdir(parents=True, exist_ok=True)
    report.write_text(text, encoding="utf-8")
    return table(summarize(results)) + f"\n\nwrote {report} and {chart}"


def plot(rows: list[dict], out: Path, machine: str) -> None:
    """Grouped bars: supervised tokens/s per case, one bar per trainer."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cases = list(dict.fromkeys(r["case"] for r in rows))
    trainers = list(dict.fromkeys(r["trainer"] for r in rows))
    width = 0.8 / max(1, len(trainers))
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(cases)), 4))
    for j, trainer in enumerate(trainers):
        xs, ys = [], []
        for i, case in enumerate(cases):
            hit = [r for r in rows if r["case"] == case and r["trainer"] == trainer]
            if hit:
                xs.append(i + (j - (len(trainers) - 1) / 2) * width)
                ys.append(hit[0]["supervised_per_s"])
        ax.bar(xs, ys, width, label=LABELS.get(trainer, trainer))
    ax.set_xticks(range(len(cases)), cases)
    ax.set_ylabel("supervised tokens / s")
    ax.set_title(f"SFT throughput, {machine}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
