"""GPU checks, ready for when a GPU is at hand (make bench-gpu; every check inside --time_limit, 6 minutes).

    python scripts/benchmark_gpu.py                       # every check
    python scripts/benchmark_gpu.py --checks varlen peak  # some of them
    python scripts/benchmark_gpu.py --out results/        # also the report, figures, log ends: 4 small files
    python scripts/benchmark_gpu.py --quick               # make bench-gpu-quick: 4 minutes, no main job

Checks (utils/bench/gpu.py): packed rows through Llama and Qwen2 models on the varlen flash kernel against
their examples alone (bf16 autocast, fp32 weights, losses and gradients; utils/bench/gpu_model.py); the bf16 matmul peak; the base preset's throughput and MFU against
TRL padding-free in bf16 on the same data and GPU-sized batch, with peak GPU memory (SmolLM2-135M full
fine-tuning too when its weights are installed); a run killed after a checkpoint and resumed; FSDP2 on one
GPU (train, checkpoint, kill, resume); the main job (make sft-pipeline-complete) from a clean copy of the
sources, timed, its table against the GPU targets. Writes the GPU section of --report. Refuses in one
line when torch sees no CUDA GPU.

--quick (utils/bench/gpu_quick.py) runs, within 4 minutes: varlen; host-device syncs per steady-state step
(torch.cuda.set_sync_debug_mode); a step profile split into attention, matmul, loss, optimizer, other and
idle; tokens/s at 4k, 16k and 64k tokens per micro-batch (base preset); the TRL comparison, resume and FSDP2
on fewer steps. Its corpora and weights stay in --data_dir between calls. The main job is not in it.
"""
from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.common.cli_values import int_at_least  # noqa: E402
from utils.common.errors import UserError, run_cli  # noqa: E402

CHECKS = ("varlen", "peak", "throughput", "resume", "fsdp2", "demo")  # utils.bench.gpu.CHECKS, torch-free
QUICK = ("varlen", "syncs", "profile", "tokens", "throughput", "resume", "fsdp2")  # gpu_quick.QUICK_CHECKS
QUICK_ONLY = tuple(name for name in QUICK if name not in CHECKS)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="the quick checks (4 minutes, no main job)")
    parser.add_argument("--checks", nargs="+", choices=[*CHECKS, *QUICK_ONLY],
                        help=f"checks to run, in order (default: {' '.join(CHECKS)}; with --quick: {' '.join(QUICK)})")
    parser.add_argument("--steps", type=int_at_least("--steps", 5), default=12,
                        help="optimizer steps of each throughput run (the first 3 not timed)")
    parser.add_argument("--work_dir", type=Path, help="where data and runs go (default: a temporary directory, "
                        "removed at the end)")
    parser.add_argument("--report", type=Path, default=Path("docs/BENCHMARKS.md"),
                        help="Markdown file whose GPU section is rewritten")
    parser.add_argument("--data_dir", type=Path, default=ROOT / "data" / "bench_gpu",
                        help="--quick: where its corpora and weights are made once and kept")
    parser.add_argument("--time_limit", type=int_at_least("--time_limit", 30),
                        help="seconds for every check together (default 360, with --quick 240); a check that finds "
                        "none left is recorded as not run")
    parser.add_argument("--out", type=Path, help="also write the report, every figure (JSON), the end of each "
                        "log and the main job's table here (at most 8 small files)")
    args = parser.parse_args(argv)
    args.checks = args.checks or list(QUICK if args.quick else CHECKS)
    args.time_limit = args.time_limit or (240 if args.quick else 360)
    asked = [name for name in args.checks if name in QUICK_ONLY]
    if asked and not args.quick:
        raise UserError(f"--checks {' '.join(asked)}: checks of the quick bench; add --quick")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from utils.bench.gpu import full_checks  # torch: after flags
    from utils.bench.gpu_quick import quick_checks
    from utils.bench.gpu_runner import Budget, report, require_gpu, run_checks, write_out
    from utils.bench.scaling import write_section

    gpu = require_gpu()
    if args.work_dir is not None and args.work_dir.exists() and any(args.work_dir.iterdir()):
        raise UserError(f"--work_dir {args.work_dir}: not empty; give a new or empty directory")
    work = (args.work_dir or Path(tempfile.mkdtemp(prefix="sft-bench-gpu-"))).resolve()
    work.mkdir(parents=True, exist_ok=True)
    command = "python scripts/benchmark_gpu.py " + " ".join(sys.argv[1:] if argv is None else argv)
    try:
        budget = Budget(args.time_limit)
        named = full_checks(work, args.steps, budget)
        if args.quick:
            named.update(quick_checks(work, budget, args.data_dir.resolve()))
        checks = run_checks(args.checks, named, budget)
        text = report(checks, gpu, command.strip(), str(datetime.date.today()))
        if args.out is not None:
            write_out(args.out, checks, text, work)
    finally:
        if args.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    write_section(args.report, text, begin="<!-- gpu:begin", end="<!-- gpu:end -->",
                  writer="scripts/benchmark_gpu.py")
    print(text)
    return 0 if all(c.passed for c in checks) else 1


if __name__ == "__main__":
    sys.exit(run_cli(main))
