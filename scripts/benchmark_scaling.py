"""Cost curves: prepare and train on generated corpora of growing size; time should be linear, memory flat.

    python scripts/benchmark_scaling.py                                  # 10k, 100k and 1M conversations
    python scripts/benchmark_scaling.py --sizes 10000 100000 300000 --steps 20

Each size: N generated conversations (JSONL in a temporary directory, never in the project), prepared
with scripts/02_prepare_sft_corpus.py --num_proc 1 (seconds, CPU seconds, peak RSS, output size), then
--steps steps of the tiny preset with scripts/03_sft_industrial.py (peak RSS, start-up until the first
step). Writes the table into the scaling section of --report and a log-log plot to --plot.

The text part (--parts text): --text_mb of generated plain text prepared by scripts/01_prepare_text_corpus.py's
stage with 1 and 2 local processes and 1 and 2 workers of a local Ray instance (where ray is installed), tokens/s
each, shards checked identical; written into the text-scaling section of --report.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.bench.scaling import measure_size, plot, report_table, results_json, tiny_model, write_section  # noqa: E402
from utils.bench.text_scaling import measure_text, text_table  # noqa: E402
from utils.common.cli_values import int_at_least, positive_int, positive_number  # noqa: E402
from utils.common.errors import UserError, run_cli  # noqa: E402
from utils.data.tokenizer import hf_dir_for  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", type=int_at_least("--sizes", 100), default=[10_000, 100_000, 1_000_000],
                        help="corpus sizes in conversations (at least 100 each)")
    parser.add_argument("--steps", type=positive_int("--steps"), default=20, help="training steps per size")
    parser.add_argument("--tokenizer_path", default="checkpoints/tokenizer/spm8k_demo",
                        help="HF tokenizer dir (make tokenizer-train-mix)")
    parser.add_argument("--work_dir", type=Path, help="where corpora and runs go (default: a new temporary "
                        "directory, removed at the end)")
    parser.add_argument("--report", type=Path, default=Path("docs/BENCHMARKS.md"),
                        help="Markdown file whose scaling section is rewritten")
    parser.add_argument("--plot", type=Path, default=Path("docs/scaling.png"), help="log-log plot (PNG)")
    parser.add_argument("--json", type=Path, help="also write the measurements as JSON here")
    parser.add_argument("--parts", nargs="+", choices=("sft", "text"), default=["sft", "text"],
                        help="sft: prepare and train the --sizes; text: the raw-text prepare stage's tokens/s")
    parser.add_argument("--text_mb", type=positive_number("--text_mb"), default=32.0,
                        help="megabytes of generated text for the text part")
    parser.add_argument("--text_executors", nargs="+", choices=("local", "ray"), default=["local", "ray"],
                        help="executors of the text part (ray: a local instance, where ray is installed)")
    parser.add_argument("--partition_mb", type=positive_number("--partition_mb"), default=1.0,
                        help="the text part's input megabytes per task")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    own_work = args.work_dir is None
    if not own_work and args.work_dir.exists() and (not args.work_dir.is_dir() or any(args.work_dir.iterdir())):
        raise UserError(f"--work_dir {args.work_dir}: not empty; give a new or empty directory")
    tokenizer = Path(hf_dir_for(args.tokenizer_path)).resolve()
    work = Path(tempfile.mkdtemp(prefix="sft-scaling-")) if own_work else args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    results, text = [], []
    try:
        if "text" in args.parts:
            text = measure_text(work / "text_bench", tokenizer, args.text_mb, args.partition_mb,
                                tuple(args.text_executors))
        if "sft" in args.parts:
            model = tiny_model(work, tokenizer)
            for count in tqdm(sorted(args.sizes), desc="sizes", unit="size"):
                results.append(measure_size(count, args.steps, work, tokenizer, model))
                print(report_table(results).splitlines()[-1], flush=True)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    command = "python scripts/benchmark_scaling.py " + " ".join(sys.argv[1:] if argv is None else argv)
    cpu = _cpu()
    if text:
        _text_section(args, text, command, cpu)
    if not results:
        return 0
    table = report_table(results)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(results, args.plot)
    text = (f"### Cost as the corpus grows\n\n`{command}` ({datetime.date.today()}, {cpu}; one process per "
            f"stage, {args.steps} training steps of the tiny preset per size)\n\n{table}\n\n"
            f"![cost as the corpus grows]({args.plot.name})")
    write_section(args.report, text)
    if args.json:
        args.json.write_text(json.dumps(results_json(results), indent=1))
    print(table)
    return 0


def _text_section(args: argparse.Namespace, results: list, command: str, cpu: str) -> None:
    table = text_table(results)
    write_section(args.report, f"### The raw-text prepare stage: tokens/s by processes and executor\n\n"
                  f"`{command}` ({datetime.date.today()}, {cpu}; {args.text_mb:g} MB of generated text in partitions "
                  f"of {args.partition_mb:g} MB, tokenizer {args.tokenizer_path}; every run's shards identical)\n\n"
                  f"{table}", begin="<!-- text-scaling:begin", end="<!-- text-scaling:end -->")
    print(table)


def _cpu() -> str:
    info = Path("/proc/cpuinfo")
    lines = info.read_text().splitlines() if info.exists() else []
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
                platform.processor())


if __name__ == "__main__":
    sys.exit(run_cli(main))
