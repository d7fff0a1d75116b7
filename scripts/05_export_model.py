"""Stage 5: export a fine-tuned model as one standalone HF directory (LoRA merged) with a model card.

    python scripts/05_export_model.py --model_path checkpoints/sft_industrial/tiny/final \\
        --output_dir checkpoints/export/tiny [--eval_report DIR/eval_report.json] [--base_model_path PATH]

A LoRA final/ is merged into its base (adapter_config.json's base_model_name_or_path, else the
training summary's model_path; --base_model_path overrides when the base moved); a full-model final/
is re-saved. An adapter trained on a 4-bit base (QLoRA) is merged into that base quantized as in training
and dequantized to --dtype: the weights it was trained against (the saved model holds no 4-bit layers).
The output loads with plain transformers: AutoModelForCausalLM + AutoTokenizer +
apply_chat_template. Eval results come from --eval_report or <model_path>/../eval/eval_report.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.checkpoint.export import DTYPES, export_model  # noqa: E402
from utils.common.cli_values import output_dir  # noqa: E402
from utils.common.errors import run_cli  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="final/ of a training run (LoRA adapter or full model)")
    parser.add_argument("--output_dir", type=output_dir(), required=True,
                        help="where the standalone model goes (replaced if present)")
    parser.add_argument("--eval_report", help="eval_report.json (or its directory) to put in the model card")
    parser.add_argument("--base_model_path", help="base model dir or .gguf, when the adapter's recorded base moved")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32", help="dtype of the saved weights")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    result = export_model(args.model_path, args.output_dir, eval_report=args.eval_report,
                          base_model_path=args.base_model_path, dtype=args.dtype)
    how = f"merged the adapter into {result.base_model}" if result.base_model else "re-saved the full model"
    if result.quantization:
        how += (f" (QLoRA: the base quantized to 4-bit {result.quantization.get('bnb_4bit_quant_type')} as in "
                "training, then dequantized)")
    print(f"{how}; reloaded with plain transformers, max logit difference {result.max_logit_diff:.1e}")
    print(f"eval results: {result.eval_report or 'none (pass --eval_report to add them to the card)'}")
    print(f"wrote {result.output_dir} (model card: {Path(result.output_dir) / 'README.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
