"""Throughput benchmark: this trainer against TRL's SFTTrainer and the transformers Trainer.

    python scripts/benchmark_throughput.py                        # the default `make bench` run
    python scripts/benchmark_throughput.py --sizes tiny small smollm2 --seq 512 1024 --steps 30 --repeats 2
    python scripts/benchmark_throughput.py --qlora --threads 1  # QLoRA vs LoRA: memory, speed, loss

Every trainer trains the same initial weights on the same prepared examples, in the same steps, with
AdamW, the same constant learning rate, clipping and number of steps, each in a fresh process.
Reports supervised and real tokens/s, padding, peak memory, the mean loss over the same steps and
MFU (see utils/bench/metrics.py); writes docs/BENCHMARKS.md, docs/benchmarks.png and a JSON of
every step. Needs the bench extras: `pip install -r requirements-bench.txt` (trl).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.bench.benchmark import PRESETS, SMOLLM2, SMOLLM2_FULL, BenchSettings  # noqa: E402
from utils.bench.runners import TRAINERS  # noqa: E402
from utils.common.errors import UserError, run_cli  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    defaults = BenchSettings()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=defaults.sizes, choices=[*PRESETS, SMOLLM2, SMOLLM2_FULL],
                        help="presets (config/pretrain/<size>.json), smollm2 (LoRA on SmolLM2-135M-Instruct), "
                        "smollm2_full (its full fine-tuning)")
    parser.add_argument("--seq", nargs="+", type=int, default=defaults.seqs, help="sequence lengths (presets)")
    parser.add_argument("--trainers", nargs="+", default=defaults.trainers, choices=TRAINERS)
    parser.add_argument("--steps", type=int, default=defaults.steps, help="optimizer steps per run")
    parser.add_argument("--warmup", type=int, default=defaults.warmup, help="first steps left out of the timing")
    parser.add_argument("--examples_per_step", type=int, default=defaults.examples_per_step)
    parser.add_argument("--smollm2_examples_per_step", type=int, default=defaults.smollm2_examples_per_step)
    parser.add_argument("--smollm2_seq", type=int, default=defaults.smollm2_seq)
    parser.add_argument("--repeats", type=int, default=defaults.repeats, help="runs of every trainer per case")
    parser.add_argument("--threads", type=int, help="torch threads in every run (default: torch's)")
    parser.add_argument("--ours_micro", type=int, help="examples per micro-batch, this trainer (default: a quarter of a step)")
    parser.add_argument("--ours_params", type=_json_object, default={},
                        help='training_params for this trainer on top of the bench\'s, as JSON, e.g. \'{"attention_fp32": false}\'')
    parser.add_argument("--baseline_micro", type=int, default=defaults.baseline_micro,
                        help="examples per micro-batch, TRL and the HF Trainer")
    parser.add_argument("--num_proc", type=int, default=defaults.num_proc, help="processes of the prep race")
    parser.add_argument("--no_prep", action="store_true", help="skip the data preparation race")
    parser.add_argument("--work_dir", type=Path, default=defaults.work_dir, help="data, weights and run logs")
    parser.add_argument("--qlora", action="store_true", help="instead: this trainer's QLoRA (4-bit base) against "
                        "LoRA on small and SmolLM2-135M (--sizes narrows it); prints a table, writes qlora.json")
    parser.add_argument("--gradient_checkpointing", action="store_true",
                        help="with --qlora: both runs recompute activations in backward")
    parser.add_argument("--report", type=Path, default=Path("docs/BENCHMARKS.md"), help="Markdown report")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prep-child", nargs=5, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        from utils.bench.benchmark import run_child_process

        return run_child_process(args.child)
    if args.prep_child:
        from utils.bench.benchmark import run_prep_child

        config, model, tokenizer, num_proc, result = args.prep_child
        return run_prep_child(Path(config), model, tokenizer, int(num_proc), Path(result))
    if args.steps <= args.warmup:
        raise UserError(f"--steps {args.steps} must be larger than --warmup {args.warmup}")
    settings = BenchSettings(sizes=args.sizes, seqs=args.seq, trainers=args.trainers, steps=args.steps,
                             warmup=args.warmup, examples_per_step=args.examples_per_step,
                             smollm2_examples_per_step=args.smollm2_examples_per_step,
                             smollm2_seq=args.smollm2_seq, repeats=args.repeats, threads=args.threads,
                             ours_micro=args.ours_micro, baseline_micro=args.baseline_micro,
                             ours_params=args.ours_params,
                             prep=not args.no_prep, num_proc=args.num_proc, work_dir=args.work_dir)
    if args.qlora:
        return _qlora(settings, args.gradient_checkpointing)
    if any(t != "ours" for t in args.trainers) or not args.no_prep:
        _require_trl()
    from utils.bench.benchmark import run_benchmark
    from utils.bench.report import write_report

    results = run_benchmark(settings)
    results["command"] = "python scripts/benchmark_throughput.py " + " ".join(sys.argv[1:] if argv is None else argv)
    args.work_dir.mkdir(parents=True, exist_ok=True)
    (args.work_dir / "results.json").write_text(json.dumps(results, indent=1))
    print(write_report(results, args.report))
    return 0


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not JSON ({err.msg}): {text}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"give a JSON object of training_params, e.g. {{\"bf16\": true}}: {text}")
    return value


def _qlora(settings, checkpointing: bool) -> int:
    from utils.bench.qlora import qlora_table, run_qlora_comparison
    from utils.parallel.quantization import require_bitsandbytes

    require_bitsandbytes("--qlora")
    result = run_qlora_comparison(settings, checkpointing)
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    (settings.work_dir / f"qlora{'_gc' if checkpointing else ''}.json").write_text(json.dumps(result, indent=1))
    print(qlora_table(result))
    return 0


def _require_trl() -> None:
    try:
        import trl  # noqa: F401
    except ImportError:
        raise UserError("trl is not installed: run `.venv/bin/pip install -r requirements-bench.txt`, "
                        "or benchmark this trainer alone with --trainers ours --no_prep") from None


if __name__ == "__main__":
    sys.exit(run_cli(main))
