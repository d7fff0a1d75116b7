"""Profile one optimizer step of this trainer on a benchmark case: where the time goes, by kind of op.

    python scripts/profile_train_step.py                       # small preset @ seq 1024, as `make bench` runs it
    taskset -c 1 env OMP_NUM_THREADS=1 python scripts/profile_train_step.py --size small --seq 1024 --threads 1

Uses the benchmark's corpus and initial weights (prepared on first use, like `make bench`), this
trainer's own set-up and loop; prints a Markdown table (utils/bench/profile.py says how ops are grouped).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.bench.benchmark import PRESETS, SMOLLM2, SMOLLM2_FULL, BenchSettings  # noqa: E402
from utils.common.errors import UserError, run_cli  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", default="small", choices=[*PRESETS, SMOLLM2, SMOLLM2_FULL])
    parser.add_argument("--seq", type=int, default=1024, help="sequence length (presets)")
    parser.add_argument("--warmup", type=int, default=2, help="steps run before the profiled one")
    parser.add_argument("--steps", type=int, default=3, help="steps profiled (the table shows their mean)")
    parser.add_argument("--params", type=json.loads, default={},
                        help='training_params on top of the benchmark\'s, as JSON, e.g. \'{"attention_fp32": false}\'')
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's)")
    parser.add_argument("--micro", type=int, help="examples per micro-batch (default: the benchmark's)")
    parser.add_argument("--work_dir", type=Path, default=BenchSettings().work_dir, help="benchmark data and weights")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.warmup < 0 or args.steps < 1:
        raise UserError(f"--warmup {args.warmup} --steps {args.steps}: give 0 or more warm-up steps and at least 1 step")
    if not isinstance(args.params, dict):
        raise UserError(f"--params: give a JSON object of training_params, e.g. {{\"attention_fp32\": false}}")
    import torch

    from utils.bench.benchmark import build_cases
    from utils.bench.profile import run_profile
    from utils.model.kernels import cuda_path

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = BenchSettings(sizes=[args.size], seqs=[args.seq], work_dir=args.work_dir)
    case = build_cases(settings)[0][0]
    with tempfile.TemporaryDirectory() as out:
        result = run_profile(case, Path(out) / "run", args.warmup, args.steps, args.micro, args.params)
    print(f"{case.name}, {torch.get_num_threads()} thread(s), torch {torch.__version__}, "
          f"mean of {args.steps} step(s) after {args.warmup}, training_params on top: {args.params or 'none'}")
    print(result.table())
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    where = "the CUDA path" if cuda_path(device) else "the CPU path (SFT_EMULATE_CUDA_KERNELS=1: the CUDA path's)"
    print(f"\n{result.syncs_line()}, on {where}")
    print("\nlargest ops by self time: " + ", ".join(f"{name} {1e3 * s:,.0f} ms" for name, s in result.top_ops))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
