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
import gc
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.cli_values import output_dir, positive_int  # noqa: E402
from utils.common.errors import run_cli  # noqa: E402
from utils.common.locks import exclusive  # noqa: E402
from utils.common.publish import atomic_dir, check_owner, refuse_inside  # noqa: E402
from utils.eval.evaluation import evaluate_model  # noqa: E402
from utils.eval.report import build_report, render_table, write_report  # noqa: E402
from utils.eval.setup import EvalRequest, check_lengths, load_eval_model, resolve_inputs  # noqa: E402
from utils.model.modeling import model_config  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> EvalRequest:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model_path", required=True, help="final/ of an SFT run: LoRA adapter or full model")
    p.add_argument("--output_dir", type=output_dir(), required=True,
                   help="where the report goes (replaced as a whole)")
    p.add_argument("--base_model_path", help="model to compare with (e.g. the pre-trained base)")
    p.add_argument("--data_dirs", nargs="+", help="prepared corpora whose val split gives the validation loss "
                   "(default: the data_dirs in the model's training_summary.json)")
    p.add_argument("--config", help="SFT training config: eval_prompts, system_prompt, generation_config "
                   "(default: the config saved in the model's training_summary.json)")
    p.add_argument("--eval_prompts", help='JSON file {"eval_prompts": [...]}: prompts to answer and score for '
                   "text quality (default: the config's evaluation_config.eval_prompts)")
    p.add_argument("--eval_set", help="JSONL of {prompt | messages, reference, task} scored by exact match")
    p.add_argument("--max_eval_examples", type=positive_int("--max_eval_examples"),
                   help="score only the first N rows of --eval_set (and of --rephrased_set, and the first N "
                   "held-out tool-call turns)")
    p.add_argument("--rephrased_set", help="JSONL like --eval_set: the same task families asked in wordings "
                   "training never used; reported as exact_match_rephrased (does the model follow the "
                   "instruction or recall its wording?)")
    p.add_argument("--retention_corpus", nargs="+", help=".txt/.md files or directories, or JSONL files")
    p.add_argument("--retention_field", default="text", help="JSONL field of the retention text (default text)")
    p.add_argument("--retention_max_tokens", type=positive_int("--retention_max_tokens"),
                   default=50_000, help="tokens of it to score (50000)")
    p.add_argument("--retention_window", type=positive_int("--retention_window"),
                   help="window length (default: pre-training sequence_length)")
    p.add_argument("--tokenizer_path", help="tokenizer (default: the one inside --model_path)")
    p.add_argument("--template", help="chat template when no --data_dirs (default: the model's, else chatml)")
    p.add_argument("--max_new_tokens", type=positive_int("--max_new_tokens"),
                   help="override generation_config.max_new_tokens")
    p.add_argument("--batch_size", type=positive_int("--batch_size"),
                   default=16, help="prompts per generation batch (16)")
    p.add_argument("--eval_batch_tokens", type=positive_int("--eval_batch_tokens"),
                   default=4096, help="tokens per packed loss batch (4096)")
    p.add_argument("--precision", choices=("auto", "fp32", "bf16"), default="auto",
                   help="auto: bf16 autocast where fast (bf16 GPUs/CPUs), else fp32")
    p.add_argument("--trust_remote_code", action="store_true", help="allow model code from the checkpoint")
    p.add_argument("--no_progress", action="store_true", help="no progress bars")
    return EvalRequest(**vars(p.parse_args(argv)))


def _evaluate(path: str, inputs, args: EvalRequest, label: str):
    print(f"evaluating {label} model {path}", flush=True)
    model = load_eval_model(path, inputs.tokenizer, inputs.fingerprint, inputs.tokenizer_path, inputs.device,
                            args.trust_remote_code, inputs.positions)
    result = evaluate_model(model, inputs)
    del model
    gc.collect()  # one model in memory at a time
    return result


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    output_dir = Path(args.output_dir)
    refuse_inside(output_dir, {"--model_path": args.model_path, "--base_model_path": args.base_model_path})
    with exclusive(output_dir):
        check_owner(output_dir, "eval")  # before minutes of evaluation, not after
        return _run(args, output_dir, start)


def _run(args: EvalRequest, output_dir: Path, start: float) -> int:
    inputs, plan = resolve_inputs(args)
    print(plan.render(), flush=True)
    for path in filter(None, (args.model_path, args.base_model_path)):  # both, before minutes on the first
        check_lengths(model_config(path, args.trust_remote_code), path, inputs.positions)
    tuned = _evaluate(args.model_path, inputs, args, "tuned")
    base = _evaluate(args.base_model_path, inputs, args, "base") if args.base_model_path else None
    settings = {"generation": asdict(inputs.settings), "batch_size": inputs.batch_size,
                "eval_batch_tokens": inputs.batch_tokens, "precision": inputs.precision, "device": inputs.device,
                "template": inputs.template.name, "tokenizer_sha256": inputs.fingerprint,
                "max_eval_examples": args.max_eval_examples, "retention_max_tokens": args.retention_max_tokens}
    paths = {"model_path": args.model_path, "base_model_path": args.base_model_path,
             "tokenizer_path": inputs.tokenizer_path, "data_dirs": inputs.data_dirs, "eval_set": args.eval_set,
             "retention_corpus": args.retention_corpus}
    report = build_report(plan.as_dict(), settings, tuned, base, paths, time.perf_counter() - start)
    with atomic_dir(output_dir, kind="eval") as tmp:
        files = write_report(tmp, report, tuned, base)
    print(render_table(report))
    print(f"wrote {', '.join(files)} to {output_dir} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
