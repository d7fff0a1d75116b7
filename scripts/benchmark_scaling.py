"""Cost curves: prepare and train on generated corpora of growing size; time should be linear, memory flat.

    python scripts/benchmark_scaling.py                                  # 10k, 100k and 1M conversations
    python scripts/benchmark_scaling.py --sizes 10000 100000 300000 --steps 20

Each size: N generated conversations (JSONL in a temporary directory, never in the project), prepared
with scripts/02_prepare_sft_corpus.py --num_proc 1 (seconds, CPU seconds, peak RSS, output size), then
--steps steps of the tiny preset with scripts/03_sft_industrial.py (peak RSS, start-up until the first
step). Writes the table into the scaling section of --report and a log-log plot to --plot.
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
from utils.common.cli_values import int_at_least, positive_int  # noqa: E402
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
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    own_work = args.work_dir is None
    if not own_work and args.work_dir.exists() and (not args.work_dir.is_dir() or any(args.work_dir.iterdir())):
        raise UserError(f"--work_dir {args.work_dir}: not empty; give a new or empty directory")
    tokenizer = Path(hf_dir_for(args.tokenizer_path)).resolve()
    work = Path(tempfile.mkdtemp(prefix="sft-scaling-")) if own_work else args.work_dir.resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        model = tiny_model(work, tokenizer)
        results = []
        for count in tqdm(sorted(args.sizes), desc="sizes", unit="size"):
            results.append(measure_size(count, args.steps, work, tokenizer, model))
            print(report_table(results).splitlines()[-1], flush=True)
    finally:
        if own_work:
            shutil.rmtree(work, ignore_errors=True)
    table = report_table(results)
    args.plot.parent.mkdir(parents=True, exist_ok=True)
    plot(results, args.plot)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() \
        else platform.processor()
    command = "python scripts/benchmark_scaling.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"### Cost as the corpus grows\n\n`{command}` ({datetime.date.today()}, {cpu}; one process per "
            f"stage, {args.steps} training steps of the tiny preset per size)\n\n{table}\n\n"
            f"![cost as the corpus grows]({args.plot.name})")
    write_section(args.report, text)
    if args.json:
        args.json.write_text(json.dumps(results_json(results), indent=1))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
