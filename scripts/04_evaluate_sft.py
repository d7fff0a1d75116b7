"""Stage 4: evaluate a fine-tuned model, side by side with its base model.

    python scripts/04_evaluate_sft.py --model_path checkpoints/sft_industrial/tiny/final \\
        --base_model_path checkpoints/pretrain/tiny/final --data_dirs data/sft_processed/demo \\
        --eval_set data/demo/instruct/test.jsonl --retention_corpus data/demo/corpus \\
        --output_dir checkpoints/sft_industrial/tiny/eval

--model_path is a LoRA adapter directory (loaded onto the base named in its adapter_config.json; an
adapter trained on a 4-bit base, QLoRA, gets the base loaded in 4 bits as in training) or a full model
directory. Measures validation loss/perplexity per source, exact match and format
compliance per task family, tool-call accuracy on the held-out turns of --data_dirs that call tools, eval-prompt samples, diversity/repetition/length/coherence of the
responses and perplexity on a raw-text corpus (domain retention); with --base_model_path every
metric for both models and the difference. Writes eval_report.json, eval_report.md,
predictions.jsonl and PNG plots into --output_dir (replaced as a whole, atomically).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.errors import run_cli  # noqa: E402
from utils.eval.request import EvalRequest, add_request_args  # noqa: E402
from utils.eval.stage import run_eval  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> EvalRequest:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_request_args(parser)  # one flag per EvalRequest field, with its help
    return EvalRequest(**vars(parser.parse_args(argv)))


def main(argv: Sequence[str] | None = None) -> int:
    run_eval(parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
