"""What an evaluation is asked: ``EvalRequest``, one typed field per flag of scripts/04_evaluate_sft.py, and
``add_request_args``, those flags with their help (the script parses them into the request)."""
from __future__ import annotations

import argparse
import dataclasses

from utils.common.cli_values import output_dir, positive_int


@dataclasses.dataclass(frozen=True)
class EvalRequest:
    """What scripts/04_evaluate_sft.py was asked (one field per flag; its --help says what each means)."""

    model_path: str
    output_dir: str
    base_model_path: str | None = None
    data_dirs: list[str] | None = None
    config: str | None = None
    eval_prompts: str | None = None
    eval_set: str | None = None
    max_eval_examples: int | None = None
    rephrased_set: str | None = None
    retention_corpus: list[str] | None = None
    retention_field: str = "text"
    retention_max_tokens: int = 50_000
    retention_window: int | None = None
    tokenizer_path: str | None = None
    template: str | None = None
    max_new_tokens: int | None = None
    batch_size: int = 16
    eval_batch_tokens: int = 4096
    precision: str = "auto"
    trust_remote_code: bool = False
    no_progress: bool = False


def add_request_args(p: argparse.ArgumentParser) -> None:
    """The flags of the evaluation stage, one per ``EvalRequest`` field."""
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
