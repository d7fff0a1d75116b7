"""Stage 3: supervised fine-tuning (LoRA or full) on prepared corpora, under accelerate or plain python.

    accelerate launch scripts/03_sft_industrial.py --config config/sft_training/lora_tiny.json \\
        --model_path checkpoints/pretrain/tiny/final --data_dirs data/sft_processed/demo \\
        --tokenizer_path checkpoints/tokenizer/spm8k_demo --output_dir checkpoints/sft_industrial/tiny

Writes checkpoint-N/ (full state, exact resume), metrics.jsonl, TensorBoard events, samples.jsonl,
loss.png and final/ (adapter or model + tokenizer) that loads with plain transformers/peft.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.cli_values import check_weights, output_dir, weight  # noqa: E402
from utils.common.errors import run_cli  # noqa: E402
from utils.parallel.accelerator import exit_process  # noqa: E402
from utils.train.cli import SFTInputs, add_run_args, load_with_overrides  # noqa: E402
from utils.train.config import SFTTrainingConfig  # noqa: E402
from utils.train.stage_sft import run_sft  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="training config, e.g. config/sft_training/lora_tiny.json")
    parser.add_argument("--model_path", required=True, help="HF model dir, pre-training output, or .gguf file")
    parser.add_argument("--data_dirs", nargs="+", required=True, help="prepared corpora (02_prepare_sft_corpus.py)")
    parser.add_argument("--data_weights", nargs="+", type=weight("--data_weights"),
                        help="sampling weight per data dir (finite, >= 0, at least one > 0)")
    parser.add_argument("--tokenizer_path", required=True, help="HF tokenizer dir (or its .model)")
    parser.add_argument("--output_dir", type=output_dir(), required=True, help="where checkpoints and final/ go")
    parser.add_argument("--eval_prompts", help='JSON file {"eval_prompts": [...]}: the prompts answered at each '
                        "evaluation (samples.jsonl), instead of the config's evaluation_config.eval_prompts")
    add_run_args(parser)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    check_weights("--data_weights", args.data_weights)
    cfg, overrides = load_with_overrides(args, "sft_training", SFTTrainingConfig)
    inputs = SFTInputs(model_path=args.model_path, data_dirs=args.data_dirs, data_weights=args.data_weights,
                       tokenizer_path=args.tokenizer_path, output_dir=Path(args.output_dir),
                       resume_from_checkpoint=args.resume_from_checkpoint, trust_remote_code=args.trust_remote_code,
                       overwrite_output_dir=args.overwrite_output_dir, overrides=overrides, sharding=args.sharding)
    summary = run_sft(cfg, inputs)
    if summary:
        print(summary)
    return 0


if __name__ == "__main__":
    exit_process(run_cli(main))
