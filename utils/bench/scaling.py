"""How cost grows with the corpus: prepare and train on generated corpora of growing size (make bench-scaling).

For each size the same steps run in fresh processes, one core's worth of work each:

1. ``generate``: N synthetic conversations (short arithmetic and word tasks, every one distinct) as JSONL
   in a work directory outside the project;
2. ``scripts/02_prepare_sft_corpus.py --num_proc 1``: wall seconds, CPU seconds, peak RSS, output bytes;
3. ``scripts/03_sft_industrial.py`` on that corpus, the tiny preset for a fixed number of steps: peak RSS,
   and the start-up: wall and CPU seconds from launch until the first step is logged (that includes one
   step, the same at every size), read from ``metrics.jsonl`` while it runs.

Time should grow linearly with the corpus and memory stay flat; the report is a Markdown table and a
log-log plot.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from utils.common.config import read_json
from utils.common.errors import UserError
from utils.common.markdown import markdown_table
from utils.data.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parents[2]
WORDS = ("apple", "river", "piano", "cloud", "garden", "pencil", "train", "mountain", "coffee", "window",
         "lamp", "forest", "stone", "paper", "violet", "engine")


@dataclass
class SizeResult:
    """What one corpus size cost."""

    conversations: int
    prepare_s: float
    prepare_cpu_s: float
    prepare_rss_mb: float
    output_mb: float
    examples: int
    tokens: int
    train_startup_s: float
    train_startup_cpu_s: float
    train_rss_mb: float
    train_s: float


def conversation(i: int) -> dict:
    """The i-th generated conversation: distinct for every i, lengths varying from a few to ~60 words."""
    a, b = i % 9973, i // 9973
    words = [WORDS[(i * 7 + k * 3) % len(WORDS)] for k in range(3 + (i % 5) * 4)]
    if i % 2:
        user, reply = f"What is {a} plus {b}? Case {i}.", f"{a} plus {b} is {a + b}."
    else:
        user = f"Reverse the words (case {i}): {' '.join(words)}"
        reply = " ".join(reversed(words))
    return {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]}


def generate(path: Path, count: int) -> None:
    with open(path, "w", encoding="utf-8") as handle:
        for i in range(count):
            handle.write(json.dumps(conversation(i)) + "\n")


def dataset_config(jsonl: Path) -> dict:
    return {"name": jsonl.stem, "description": "generated conversations (cost curves)", "template": "chatml",
            "output_params": {"sequence_length": 512, "shard_size": 50000, "train_ratio": 0.99,
                              "overlong": "truncate"},
            "quality_filters": {"min_response_length": 1, "dedupe": True},
            "datasets": [{"name": "generated", "type": "jsonl", "dataset_name": str(jsonl), "format": "messages",
                          "license": "generated"}],
            "seed": 42}


def training_config(steps: int) -> dict:
    return {"name": "scaling_tiny", "description": "a fixed number of steps of the tiny preset (cost curves)",
            "training_params": {"learning_rate": 1e-3, "max_steps": steps, "micro_batch_tokens": 1024,
                                "scheduler": "constant", "logging_steps": 1, "eval_steps": 0,
                                "save_steps": 0, "eval_max_batches": 1, "bf16": "auto", "seed": 1}}


def run_measured(command: list[str], log: Path, poll: Path | None = None) -> tuple[float, float, float, float]:
    """Run ``command`` to the end: (wall s, CPU s, peak RSS MiB, wall s until ``poll`` first holds a line)."""
    start = time.perf_counter()
    first = float("nan")
    with open(log, "w") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})
        while poll is not None and first != first and proc.poll() is None:
            if poll.exists() and poll.stat().st_size:
                first = time.perf_counter() - start
            time.sleep(0.05)
        _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"{Path(command[1]).name} failed (exit {code}): {tail[0][:300]}; full log in {log}")
    return wall, usage.ru_utime + usage.ru_stime, usage.ru_maxrss / 1024, first


def tiny_model(work: Path, tokenizer: Path) -> Path:
    """Initial weights of the tiny preset (config/pretrain/tiny.json) for ``tokenizer``, saved in ``work``."""
    from utils.model.modeling import ModelArchitecture, build_model

    out = work / "tiny_model"
    arch = ModelArchitecture(**read_json(ROOT / "config" / "pretrain" / "tiny.json")["model"])
    build_model(arch, load_tokenizer(tokenizer), seed=0).save_pretrained(str(out))
    return out


def measure_size(count: int, steps: int, work: Path, tokenizer: Path, model: Path) -> SizeResult:
    """Generate, prepare and train one corpus size; everything lands under ``work``."""
    jsonl, data, run = work / f"conv_{count}.jsonl", work / f"prepared_{count}", work / f"run_{count}"
    generate(jsonl, count)
    config = work / f"dataset_{count}.json"
    config.write_text(json.dumps(dataset_config(jsonl)))
    py = sys.executable
    prep = run_measured([py, "scripts/02_prepare_sft_corpus.py", "--config", str(config), "--tokenizer_path",
                         str(tokenizer), "--output_dir", str(data), "--num_proc", "1", "--force"],
                        work / f"prepare_{count}.log")
    jsonl.unlink()
    state = json.loads((data / "training_state.json").read_text())
    manifest = json.loads((data / "manifest.json").read_text())
    train_config = work / "training.json"
    train_config.write_text(json.dumps(training_config(steps)))
    train = run_measured([py, "scripts/03_sft_industrial.py", "--config", str(train_config), "--model_path",
                          str(model), "--data_dirs", str(data), "--tokenizer_path", str(tokenizer),
                          "--output_dir", str(run), "--overwrite_output_dir"],
                         work / f"train_{count}.log", poll=run / "metrics.jsonl")
    first = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    size = sum(p.stat().st_size for p in data.iterdir() if p.is_file())
    return SizeResult(count, state["timings"]["total_s"], state["timings"]["cpu_s"], prep[2], size / 2**20,
                      sum(manifest["splits"][split]["conversations"] for split in ("train", "val")),
                      sum(manifest["splits"][split]["total_tokens"] for split in ("train", "val")), train[3], first["process_cpu_s"], train[2], train[0])


def report_table(results: list[SizeResult]) -> str:
    headers = ["conversations", "tokens", "prepare s", "prepare CPU s", "CPU µs / conversation",
               "CPU µs / 100 tokens", "prepare peak RSS MiB", "output MiB", "train start-up s", "start-up CPU s",
               "train peak RSS MiB"]
    rows = [[f"{r.conversations:,}", f"{r.tokens:,}", f"{r.prepare_s:.1f}", f"{r.prepare_cpu_s:.1f}",
             f"{r.prepare_cpu_s / r.conversations * 1e6:.0f}", f"{r.prepare_cpu_s / max(r.tokens, 1) * 1e8:.0f}",
             f"{r.prepare_rss_mb:,.0f}", f"{r.output_mb:,.1f}",
             f"{r.train_startup_s:.1f}", f"{r.train_startup_cpu_s:.1f}", f"{r.train_rss_mb:,.0f}"]
            for r in results]
    return "\n".join(markdown_table(headers, rows, align="r" * len(headers)))


def plot(results: list[SizeResult], path: Path) -> None:
    """Log-log: seconds and MiB against conversations, with a linear-growth guide."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after choosing the Agg backend (no display needed)

    n = [r.conversations for r in results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for values, label in (([r.prepare_cpu_s for r in results], "prepare, CPU s"),
                          ([r.prepare_s for r in results], "prepare, wall s"),
                          ([r.train_startup_cpu_s for r in results], "train start-up, CPU s")):
        left.loglog(n, values, marker="o", label=label)
    left.loglog(n, [results[0].prepare_cpu_s * x / n[0] for x in n], "k:", label="linear in N")
    left.set(xlabel="conversations", ylabel="seconds", title="time")
    for values, label in (([r.prepare_rss_mb for r in results], "prepare peak RSS"),
                          ([r.train_rss_mb for r in results], "train peak RSS"),
                          ([r.output_mb for r in results], "prepared output size")):
        right.loglog(n, values, marker="o", label=label)
    right.set(xlabel="conversations", ylabel="MiB", title="memory and disk")
    for axis in (left, right):
        axis.grid(True, which="both", alpha=0.3)
        axis.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_section(doc: Path, text: str, begin: str = "<!-- scaling:begin", end: str = "<!-- scaling:end -->",
                  writer: str = "scripts/benchmark_scaling.py") -> None:
    """Replace the marked section of ``doc`` (appended with its markers when absent)."""
    old = doc.read_text(encoding="utf-8") if doc.exists() else ""
    block = f"{begin} (written by {writer}) -->\n{text.strip()}\n{end}"
    if begin in old and end in old:
        head, rest = old.split(begin, 1)
        new = head + block + rest.split(end, 1)[1]
    else:
        new = old.rstrip("\n") + ("\n\n" if old else "") + block + "\n"
    tmp = doc.with_name(doc.name + ".tmp")
    tmp.write_text(new, encoding="utf-8")
    os.replace(tmp, doc)


def results_json(results: list[SizeResult]) -> list[dict]:
    return [asdict(r) for r in results]
