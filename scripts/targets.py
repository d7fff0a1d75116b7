"""What the make targets run: each resolves its defaults from the user's last step, prints every value with where it
came from, runs the stage script, and records what it made for the next target.

    make prepare-sft-corpus SFT_DATASET_CONFIG=config/sft_datasets/alpaca_chatml.json   # writes data/sft_processed/LAST
    make sft-train-small                     # trains on that corpus, the small preset, lora_small.json; writes checkpoints/sft_industrial/LAST
    make sft-eval                            # evaluates what sft-train-small wrote, beside its base

Only the variables given to make (command line or environment) arrive here as flags; the rest are defaults
resolved below, in this order: the value given, the user's last step, the pipeline's default.
"""
from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from utils.common.config import load_config  # noqa: E402
from utils.common.errors import UserError, run_cli  # noqa: E402
from utils.common.pointers import (SFT_CORPORA, SFT_RUNS, TOKENIZERS, corpus_tokenizer, read_last,  # noqa: E402
                                   trained_with, write_last)
from utils.data.tokenizer import TokenizerConfig  # noqa: E402

SIZES = ("tiny", "small", "base")
DEMO_TOKENIZER = TOKENIZERS / "spm8k_demo"
DEMO_EVAL_SET = Path("data/demo/instruct/test.jsonl")
DEMO_REPHRASED = Path("data/demo/instruct/test_rephrased.jsonl")
DEMO_RETENTION = Path("data/demo/corpus/docstrings")


class Resolved:
    """Values with the place each came from, printed as one block before the stage runs."""

    def __init__(self, target: str) -> None:
        self.target, self.rows = target, []

    def add(self, name: str, value, origin: str):
        self.rows.append((name, str(value), origin))
        return value

    def print(self) -> None:
        width = max(len(n) for n, _, _ in self.rows)
        print(f"make {self.target}:")
        for name, value, origin in self.rows:
            print(f"  {name:<{width}}  {value}   ({origin})")
        sys.stdout.flush()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("tokenizer", "prepare", "train", "eval"))
    parser.add_argument("size", nargs="?", choices=SIZES, help="train: which pre-trained preset")
    for var in ("SFT_DATASET_CONFIG", "SFT_TOKENIZER", "SFT_DATA_OUT", "SFT_TRAINING_CONFIG", "SFT_MODEL_PATH",
                "SFT_DATA_DIRS", "SFT_DATA_WEIGHTS", "SFT_OUTPUT_DIR", "SFT_RESUME", "SFT_EVAL_MODEL",
                "SFT_EVAL_BASE", "SFT_EVAL_SET", "SFT_EVAL_RETENTION", "SFT_EVAL_OUT", "SFT_EVAL_MAX_EXAMPLES",
                "TOKENIZER", "TOKENIZER_CONFIG"):
        parser.add_argument(f"--{var}", help=f"make variable {var}, given by the user")
    parser.add_argument("--extra", default="", help="TRAIN_ARGS / PREPARE_ARGS / EVAL_ARGS: flags appended as is")
    parser.add_argument("--num_proc", default=str(os.cpu_count() or 1))
    args = parser.parse_args(argv)
    if args.action == "train" and not args.size:
        parser.error("train needs a size: tiny, small or base")
    return args


def given(value: str | None) -> bool:
    return value is not None and value.strip() != ""


def default_tokenizer(args, res: Resolved) -> str:
    if given(args.TOKENIZER):
        return res.add("tokenizer", args.TOKENIZER, "TOKENIZER")
    last = read_last(TOKENIZERS)
    if last is not None:
        return res.add("tokenizer", last, f"{TOKENIZERS}/LAST: the last make tokenizer-train-mix")
    return res.add("tokenizer", DEMO_TOKENIZER, "default: the demo tokenizer")


def tokenizer(args) -> list[str]:
    """Train the config's tokenizer unless its output is newer than the config; either way it becomes the last."""
    config = Path(args.TOKENIZER_CONFIG or "config/tokenizer/spm8k_demo.json")
    settings = load_config(config, "tokenizer", TokenizerConfig)
    out = Path(settings.output_dir) / settings.name
    stamp = out / "tokenizer.json"
    command = ["scripts/00_train_tokenizer.py", "--config", str(config)]
    if stamp.is_file() and stamp.stat().st_mtime >= config.stat().st_mtime:
        print(f"{out}: up to date (newer than {config}); delete it to train again")
    else:
        run(command)
    if Path(settings.output_dir).resolve() == TOKENIZERS.resolve():
        write_last(TOKENIZERS, settings.name)
        print(f"{TOKENIZERS}/LAST -> {settings.name}: the default tokenizer of the make targets from now on")
    return command


def prepare(args) -> list[str]:
    res = Resolved("prepare-sft-corpus")
    config = Path(args.SFT_DATASET_CONFIG) if given(args.SFT_DATASET_CONFIG) else Path("config/sft_datasets/demo.json")
    res.add("dataset config", config, "SFT_DATASET_CONFIG" if given(args.SFT_DATASET_CONFIG) else "default")
    tokenizer = (res.add("tokenizer", args.SFT_TOKENIZER, "SFT_TOKENIZER") if given(args.SFT_TOKENIZER)
                 else default_tokenizer(args, res))
    out = Path(args.SFT_DATA_OUT) if given(args.SFT_DATA_OUT) else SFT_CORPORA / config.stem
    res.add("output", out, "SFT_DATA_OUT" if given(args.SFT_DATA_OUT) else "data/sft_processed/<config name>")
    res.print()
    command = ["scripts/02_prepare_sft_corpus.py", "--config", str(config), "--tokenizer_path", str(tokenizer),
               "--output_dir", str(out), "--num_proc", args.num_proc, "--force", *shlex.split(args.extra)]
    run(command)
    if out.parent.resolve() == SFT_CORPORA.resolve() or out.parent == SFT_CORPORA:
        write_last(SFT_CORPORA, out.name)
        print(f"{SFT_CORPORA}/LAST -> {out.name}: make sft-train-tiny/-small/-base will train on it")
    else:
        print(f"{out} is outside {SFT_CORPORA}/: not recorded as the last corpus; pass SFT_DATA_DIRS={out} to "
              "train on it")
    return command


def train(args) -> list[str]:
    size = args.size
    res = Resolved(f"sft-train-{size}")
    if given(args.SFT_DATA_DIRS):
        dirs = res.add("data dirs", args.SFT_DATA_DIRS, "SFT_DATA_DIRS").split()
    elif read_last(SFT_CORPORA) is not None:
        dirs = [res.add("data dirs", read_last(SFT_CORPORA), f"{SFT_CORPORA}/LAST: the last make prepare-sft-corpus")]
    else:
        dirs = [res.add("data dirs", SFT_CORPORA / "demo", "default: the demo corpus (no make prepare-sft-corpus "
                        "yet)")]
    if given(args.SFT_DATA_WEIGHTS):
        res.add("data weights", args.SFT_DATA_WEIGHTS, "SFT_DATA_WEIGHTS")
    model = (res.add("model", args.SFT_MODEL_PATH, "SFT_MODEL_PATH") if given(args.SFT_MODEL_PATH)
             else res.add("model", f"checkpoints/pretrain/{size}/final", f"the {size} preset's pre-training "
                          f"(make pretrain-{size})"))
    config = (res.add("training config", args.SFT_TRAINING_CONFIG, "SFT_TRAINING_CONFIG")
              if given(args.SFT_TRAINING_CONFIG)
              else res.add("training config", f"config/sft_training/lora_{size}.json", f"the {size} preset's"))
    if given(args.SFT_TOKENIZER):
        tokenizer = res.add("tokenizer", args.SFT_TOKENIZER, "SFT_TOKENIZER")
    elif corpus_tokenizer(Path(dirs[0])):
        tokenizer = res.add("tokenizer", corpus_tokenizer(Path(dirs[0])), f"{dirs[0]}/manifest.json")
    else:
        tokenizer = default_tokenizer(args, res)
    out = (res.add("output", args.SFT_OUTPUT_DIR, "SFT_OUTPUT_DIR") if given(args.SFT_OUTPUT_DIR)
           else res.add("output", SFT_RUNS / size, f"{SFT_RUNS}/<size>"))
    if given(args.SFT_RESUME):
        res.add("resume", args.SFT_RESUME, "SFT_RESUME")
    res.print()
    command = ["scripts/03_sft_industrial.py", "--config", str(config), "--model_path", str(model),
               "--data_dirs", *map(str, dirs), "--tokenizer_path", str(tokenizer), "--output_dir", str(out)]
    if given(args.SFT_DATA_WEIGHTS):
        command += ["--data_weights", *args.SFT_DATA_WEIGHTS.split()]
    if given(args.SFT_RESUME):
        command += ["--resume_from_checkpoint", args.SFT_RESUME]
    run(command + shlex.split(args.extra))
    if Path(out).parent.resolve() == SFT_RUNS.resolve() or Path(out).parent == SFT_RUNS:
        write_last(SFT_RUNS, Path(out).name)
        print(f"{SFT_RUNS}/LAST -> {Path(out).name}: make sft-eval will evaluate it")
    return command


def evaluate(args) -> list[str]:
    res = Resolved("sft-eval")
    if given(args.SFT_EVAL_MODEL):
        model = Path(res.add("model", args.SFT_EVAL_MODEL, "SFT_EVAL_MODEL"))
    elif read_last(SFT_RUNS) is not None:
        model = Path(res.add("model", read_last(SFT_RUNS) / "final", f"{SFT_RUNS}/LAST: the last make sft-train-*"))
    else:
        raise UserError("make sft-eval: no model to evaluate: no make sft-train-tiny/-small/-base has finished here "
                        f"({SFT_RUNS}/LAST is missing); train one first, or set SFT_EVAL_MODEL=<a final/ directory>")
    summary = trained_with(model)
    base = args.SFT_EVAL_BASE if given(args.SFT_EVAL_BASE) else summary.get("model_path")
    res.add("base model", base or "(none)", "SFT_EVAL_BASE" if given(args.SFT_EVAL_BASE)
            else f"{model}/training_summary.json (model_path)")
    dirs = args.SFT_DATA_DIRS.split() if given(args.SFT_DATA_DIRS) else summary.get("data_dirs") or []
    res.add("data dirs", " ".join(dirs) or "(none)", "SFT_DATA_DIRS" if given(args.SFT_DATA_DIRS)
            else f"{model}/training_summary.json (data_dirs)")
    demo = any(Path(d).name == "demo" for d in dirs)
    eval_set = args.SFT_EVAL_SET if given(args.SFT_EVAL_SET) else (str(DEMO_EVAL_SET) if demo else None)
    res.add("eval set", eval_set or "(none: no exact match)", "SFT_EVAL_SET" if given(args.SFT_EVAL_SET)
            else "the demo's held-out tasks (trained on the demo corpus)" if demo else "no eval set for this corpus")
    retention = (args.SFT_EVAL_RETENTION if given(args.SFT_EVAL_RETENTION)
                 else str(DEMO_RETENTION) if DEMO_RETENTION.exists() else None)
    res.add("retention corpus", retention or "(none)", "SFT_EVAL_RETENTION" if given(args.SFT_EVAL_RETENTION)
            else "default: the demo docstrings")
    out = (res.add("output", args.SFT_EVAL_OUT, "SFT_EVAL_OUT") if given(args.SFT_EVAL_OUT)
           else res.add("output", model.parent / "eval", "beside the model's final/"))
    res.print()
    command = ["scripts/04_evaluate_sft.py", "--model_path", str(model), "--output_dir", str(out)]
    command += ["--base_model_path", str(base)] if base else []
    command += ["--data_dirs", *dirs] if dirs else []
    command += ["--eval_set", eval_set] if eval_set else []
    command += ["--rephrased_set", str(DEMO_REPHRASED)] if demo and not given(args.SFT_EVAL_SET) and \
        DEMO_REPHRASED.exists() else []
    command += ["--retention_corpus", retention] if retention else []
    if given(args.SFT_EVAL_MAX_EXAMPLES):
        command += ["--max_eval_examples", args.SFT_EVAL_MAX_EXAMPLES]
    run(command + shlex.split(args.extra))
    return command


def run(command: list[str]) -> None:
    """The stage script with this interpreter; its failure (already printed in one line) is ours."""
    code = subprocess.call([sys.executable, str(ROOT / command[0]), *command[1:]])
    if code:
        raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    {"tokenizer": tokenizer, "prepare": prepare, "train": train, "eval": evaluate}[args.action](args)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
