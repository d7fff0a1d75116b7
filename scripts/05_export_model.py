"""Stage 5: export a fine-tuned model as one standalone HF directory (LoRA merged) with a model card.

    python scripts/05_export_model.py --model_path checkpoints/sft_industrial/tiny/final \\
        --output_dir checkpoints/export/tiny [--eval_report DIR/eval_report.json] [--base_model_path PATH] \\
        [--gguf [f16 q8_0 ...]] [--base_model_id OWNER/NAME] [--license ID]

A LoRA final/ is merged into its base (adapter_config.json's base_model_name_or_path, else the
training summary's model_path; --base_model_path overrides when the base moved); a full-model final/
is re-saved. An adapter trained on a 4-bit base (QLoRA) is merged into that base quantized as in training
and dequantized to --dtype: the weights it was trained against (the saved model holds no 4-bit layers).
The output loads with plain transformers: AutoModelForCausalLM + AutoTokenizer +
apply_chat_template, whose chat template renders what training rendered. Weights are saved in bfloat16
unless --dtype says otherwise (float16 for a run trained with fp16). --gguf adds llama.cpp GGUF files (llama.cpp's
own converter, `make gguf`), checked with llama-cpp-python, and an Ollama Modelfile. Eval results come from
--eval_report or <model_path>/../eval/eval_report.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.checkpoint.export import DTYPES, ExportOptions, export_model  # noqa: E402
from utils.checkpoint.gguf_export import EXACT_TYPES, GGUF_TYPES  # noqa: E402
from utils.common.cli_values import output_dir  # noqa: E402
from utils.common.errors import run_cli  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_path", required=True, help="final/ of a training run (LoRA adapter or full model)")
    parser.add_argument("--output_dir", type=output_dir(), required=True,
                        help="where the standalone model goes (replaced if present)")
    parser.add_argument("--eval_report", help="eval_report.json (or its directory) to put in the model card")
    parser.add_argument("--base_model_path", help="base model dir or .gguf, when the adapter's recorded base moved")
    parser.add_argument("--dtype", choices=["auto", *sorted(DTYPES)], default="auto",
                        help="dtype of the saved weights (auto: bfloat16, float16 for a run trained with fp16)")
    parser.add_argument("--gguf", nargs="*", choices=GGUF_TYPES, metavar="TYPE",
                        help=f"also write GGUF files of these types ({', '.join(GGUF_TYPES)}; f16 when none is "
                             "named) and an Ollama Modelfile; needs `make gguf`")
    parser.add_argument("--base_model_id", help="the base model's Hub id (OWNER/NAME) for the model card, when "
                                                "its recorded name is a local path")
    parser.add_argument("--license", help="license id for the model card's metadata (e.g. apache-2.0); "
                                          "default: unknown")
    args = parser.parse_args(argv)
    if args.gguf is not None and not args.gguf:
        args.gguf = ["f16"]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = ExportOptions(eval_report=args.eval_report, base_model_path=args.base_model_path, dtype=args.dtype,
                            gguf=args.gguf or [], base_model_id=args.base_model_id, license=args.license)
    result = export_model(args.model_path, args.output_dir, options)
    how = f"merged the adapter into {result.base_model}" if result.base_model else "re-saved the full model"
    if result.quantization:
        how += (f" (QLoRA: the base quantized to 4-bit {result.quantization.get('bnb_4bit_quant_type')} as in "
                "training, then dequantized)")
    print(f"{how}; saved in {result.dtype} ({result.dtype_reason}); reloaded with plain transformers, "
          f"max logit difference {result.max_logit_diff:.1e}")
    print("chat template: " + ("the trained one written into the tokenizer (chat_template.jinja)"
                               if result.template_written else "the tokenizer's own renders what training rendered"))
    print(f"base model in the card: {result.base_id or 'a local path (no Hub id known: pass --base_model_id)'}")
    for file in result.gguf:
        exact = " (must equal)" if file.type in EXACT_TYPES else " (q8_0 rounds the weights)"
        print(f"GGUF {file.path.name}: greedy tokens equal on {file.check['greedy_equal']}/"
              f"{file.check['prompts']} prompts{exact}")
    print(f"eval results: {result.eval_report or 'none (pass --eval_report to add them to the card)'}")
    print(f"wrote {result.output_dir} (model card: {Path(result.output_dir) / 'README.md'})")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
