"""What a sharded run's checkpoint costs each rank, gathered on rank 0 vs written as shards (DCP).

    python scripts/benchmark_checkpoint.py                      # 1 and 2 ranks, a 134M-parameter Llama shape
    python scripts/benchmark_checkpoint.py --hidden 512 --layers 8

For each layout and number of ranks, ``utils/bench/checkpoint_memory.py`` runs under torchrun (gloo, one thread
per rank): one AdamW step of an FSDP2-sharded model, then ``save_checkpoint`` timed while each rank's resident
memory is sampled. Writes the table into the checkpoint section of --report.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.bench.benchmark import machine_info  # noqa: E402
from utils.bench.scaling import write_section  # noqa: E402
from utils.common.cli_values import positive_int  # noqa: E402
from utils.common.errors import UserError, run_cli  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ranks", nargs="+", type=positive_int("--ranks"), default=[1, 2])
    parser.add_argument("--hidden", type=positive_int("--hidden"), default=768)
    parser.add_argument("--layers", type=positive_int("--layers"), default=12)
    parser.add_argument("--report", type=Path, default=Path("docs/BENCHMARKS.md"),
                        help="Markdown file whose checkpoint section is rewritten")
    parser.add_argument("--json", type=Path, help="also write the measurements as JSON here")
    return parser.parse_args(argv)


def measure(layout: str, ranks: int, hidden: int, layers: int, work: Path) -> list[dict]:
    out = work / f"{layout}_{ranks}"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks),
               "-m", "utils.bench.checkpoint_memory", "--layout", layout, "--out", str(out),
               "--hidden", str(hidden), "--layers", str(layers)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise UserError(f"checkpoint bench ({layout}, {ranks} ranks) failed: {tail[:300]}")
    return [json.loads((out / f"result_{rank}.json").read_text()) for rank in range(ranks)]


def table(results: list[dict]) -> str:
    rows = ["| layout | ranks | rank | checkpoint s | resident before MiB | peak rise MiB | largest file MiB |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        rows.append(f"| {r['layout']} | {r['world']} | {r['rank']} | {r['seconds']:.1f} | {r['rss_before_mib']:.0f} | "
                    f"{r['peak_rise_mib']:.0f} | {r['largest_file_mib']:.0f} |")
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    results = []
    with tempfile.TemporaryDirectory(prefix="sft-checkpoint-bench-") as work:
        for layout in ("gathered", "sharded"):
            for ranks in args.ranks:
                results += measure(layout, ranks, args.hidden, args.layers, Path(work))
                print(table(results).splitlines()[-1], flush=True)
    parameters = results[0]["parameters"]
    rank0 = {(r["layout"], r["world"]): r["peak_rise_mib"] for r in results if r["rank"] == 0}
    ratios = [f"{n} rank(s): {rank0[('sharded', n)]:.0f} MiB vs {rank0[('gathered', n)]:.0f} MiB" for n in args.ranks]
    command = "python scripts/benchmark_checkpoint.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"### Checkpoint of a sharded run: gathered vs DCP shards\n\n`{command}` ({datetime.date.today()}, "
            f"{machine_info()['cpu']}; FSDP2 over gloo, one thread per rank; a Llama shape of {parameters / 1e6:.0f}M "
            f"parameters, fp32 weights + AdamW = {results[0]['state_mib']:.0f} MiB)\n\n{table(results)}\n\n"
            f"Rank 0's peak rise, DCP vs gathered: {'; '.join(ratios)}. \"peak rise\" is the highest resident set "
            "sampled every 2 ms during `save_checkpoint`, less the resident set just before it. With one rank the "
            "gathered state is the rank's own tensors (nothing to collect); with more, rank 0 collects the whole "
            "weights and AdamW state of every rank, while under DCP each rank writes the shards it holds.")
    write_section(args.report, text, begin="<!-- checkpoint:begin", end="<!-- checkpoint:end -->",
                  writer="scripts/benchmark_checkpoint.py")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
