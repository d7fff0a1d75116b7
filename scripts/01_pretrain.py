"""Stage 1: pre-train a Llama-style preset from scratch, or continue pre-training (CPT) a checkpoint.

    python scripts/01_pretrain.py --config config/pretrain/tiny.json --tokenizer_path checkpoints/tokenizer/spm8k_demo
    python scripts/01_pretrain.py --config config/pretrain/cpt_lora.json --model_path checkpoints/pretrain/tiny/final ...
    python scripts/01_pretrain.py --config config/pretrain/tiny.json --tokenizer_path ... \
        --data_dirs data/text_processed/tiny     # text prepared ahead by scripts/01_prepare_text_corpus.py

Writes <output_dir>/final (HF format: safetensors, tokenizer, resolved config), checkpoints,
metrics.jsonl, TensorBoard events and a loss/lr plot.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.cli_values import output_dir  # noqa: E402
from utils.common.errors import run_cli  # noqa: E402
from utils.parallel.accelerator import exit_process  # noqa: E402
from utils.train.cli import PretrainInputs, add_run_args, load_with_overrides  # noqa: E402
from utils.train.config import PretrainConfig  # noqa: E402
from utils.train.stage_pretrain import run_pretraining  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="pre-training config, e.g. config/pretrain/tiny.json")
    parser.add_argument("--tokenizer_path", required=True, help="HF tokenizer dir (or its .model)")
    parser.add_argument("--output_dir", type=output_dir(), help="default: checkpoints/pretrain/<config name>")
    parser.add_argument("--model_path", help="continue pre-training this HF checkpoint (CPT) instead of a new preset")
    parser.add_argument("--data_dirs", nargs="+", default=[], help="prepared text corpora "
                        "(scripts/01_prepare_text_corpus.py) to train on; without it the config's data.sources "
                        "are tokenized at launch (a convenience for small corpora)")
    add_run_args(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg, overrides = load_with_overrides(args, "pretrain", PretrainConfig)
    inputs = PretrainInputs(config_path=args.config, tokenizer_path=args.tokenizer_path, model_path=args.model_path,
                            data_dirs=args.data_dirs,
                            output_dir=Path(args.output_dir or f"checkpoints/pretrain/{cfg.name}"),
                            resume_from_checkpoint=args.resume_from_checkpoint,
                            trust_remote_code=args.trust_remote_code, overrides=overrides,
                            overwrite_output_dir=args.overwrite_output_dir, sharding=args.sharding)
    summary = run_pretraining(cfg, inputs)
    if summary:
        print(summary)
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
