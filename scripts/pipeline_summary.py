"""Print (and save) the closing table of a pipeline run from its evaluation reports.

    python scripts/pipeline_summary.py --column pretrained=EVAL/eval_report.json:base \\
        --column SFT=EVAL/eval_report.json:tuned --artefact "SFT model=checkpoints/sft_industrial/tiny/final" \\
        --output checkpoints/sft_industrial/tiny/SUMMARY.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.errors import UserError, run_cli  # noqa: E402
from utils.common.publish import write_text_atomic  # noqa: E402
from utils.monitor.pipeline_summary import read_column, render  # noqa: E402


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--column", action="append", required=True, help="LABEL=PATH/eval_report.json:tuned|base")
    parser.add_argument("--artefact", action="append", default=[], help="NAME=PATH, listed under the table")
    parser.add_argument("--output", help="also write the table to this markdown file")
    args = parser.parse_args(argv)
    artefacts = []
    for spec in args.artefact:
        name, sep, path = spec.partition("=")
        if not sep:
            raise UserError(f"--artefact {spec!r}: expected NAME=PATH")
        artefacts.append((name, path))
    text = render([read_column(spec) for spec in args.column], artefacts)
    print(text, end="")
    if args.output:
        write_text_atomic(args.output, text)
        print(f"summary written to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
