"""Command-line options shared by the training stages (01 pre-training/CPT, 03 SFT), and the typed inputs the
scripts fill from their flags (a stage never sees an argparse Namespace)."""
from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from utils.common.cli_values import mapping, positive_int, seed
from utils.common.config import load_config, load_eval_prompts
from utils.parallel.fsdp import SHARDINGS

C = TypeVar("C")


@dataclass(kw_only=True)
class RunInputs:
    """What a training stage takes besides its config: the scripts fill it from their flags."""

    tokenizer_path: str
    """HF tokenizer dir (or its .model)."""
    output_dir: Path
    """Where checkpoints, metrics and final/ go."""
    resume_from_checkpoint: str | None = None
    """A checkpoint-N dir, or 'auto' for the newest complete, intact one."""
    trust_remote_code: bool = False
    """Allow model code from the checkpoint."""
    overwrite_output_dir: bool = False
    """Start a new run in an output_dir that holds another run's checkpoints, deleting them and final/."""
    overrides: dict = field(default_factory=dict)
    """{field: flag} of the training params set on the command line, for the run record."""
    sharding: str = "none"
    """--sharding: none (a whole model per rank) or fsdp2 (weights, gradients and optimizer state sharded)."""


@dataclass(kw_only=True)
class SFTInputs(RunInputs):
    """What scripts/03_sft_industrial.py passes besides the config."""

    model_path: str
    """HF model dir, pre-training output, or .gguf file."""
    data_dirs: list[str]
    """Prepared corpora (scripts/02_prepare_sft_corpus.py); each directory's name names its source."""
    data_weights: list[float] | None = None
    """Sampling weight per data dir (else the config's data_weights, else proportional to size)."""


@dataclass(kw_only=True)
class PretrainInputs(RunInputs):
    """What scripts/01_pretrain.py passes besides the config."""

    config_path: str
    """The config file, named in errors."""
    model_path: str | None = None
    """Continue pre-training this HF checkpoint (CPT) instead of building the config's preset."""
    data_dirs: list[str] = field(default_factory=list)
    """Prepared text corpora (scripts/01_prepare_text_corpus.py) to train on instead of tokenizing the config's
    data.sources at launch; their train (and val) streams are joined in the order given."""


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """--resume_from_checkpoint, --overwrite_output_dir, --set, --max_steps, --seed, --trust_remote_code,
    --sharding."""
    parser.add_argument("--resume_from_checkpoint",
                        help="a checkpoint-N dir, or 'auto' for the newest complete, intact one")
    parser.add_argument("--overwrite_output_dir", action="store_true",
                        help="start a new run where another run's checkpoints are (deletes them and final/)")
    parser.add_argument("--set", action="append", type=mapping("--set", "FIELD=VALUE"), default=[],
                        metavar="FIELD=VALUE",
                        help="set a config field for this run (dotted, a JSON value), e.g. --set "
                        "training_params.micro_batch_tokens=2048; checked like the file, recorded in the run")
    parser.add_argument("--max_steps", type=positive_int("--max_steps"), help="override training_params.max_steps")
    parser.add_argument("--seed", type=seed("--seed"), help="override training_params.seed")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow model code from the checkpoint")
    parser.add_argument("--sharding", choices=SHARDINGS, default="none",
                        help="fsdp2: shard weights, gradients and optimizer state over the processes (torch FSDP2; "
                        "implied by `accelerate launch --config_file config/accelerate/fsdp.yaml`); none: a whole "
                        "model per process (DDP), the default")


def load_with_overrides(args: argparse.Namespace, schema_name: str, cls: type[C]) -> tuple[C, dict[str, str]]:
    """The one place a run's config changes after its file: ``args.config`` loaded with every ``--set`` applied
    first (so checked like the file), then ``--max_steps``, ``--seed`` and, for a script that has the flag,
    ``--eval_prompts``. Returns the config (never changed after this: later changes are new objects) and
    {field: flag} of what the command line set, which the run plan announces and the run records."""
    cfg = load_config(args.config, schema_name, cls, args.set)
    applied = {name: f"--set {name}={value}" for name, value in args.set}
    params = {name: getattr(args, name) for name in ("max_steps", "seed") if getattr(args, name) is not None}
    if params:
        cfg = dataclasses.replace(cfg, training_params=dataclasses.replace(cfg.training_params, **params))
        applied.update({name: f"--{name}" for name in params})
    if getattr(args, "eval_prompts", None):
        prompts = load_eval_prompts(args.eval_prompts)
        cfg = dataclasses.replace(cfg, evaluation_config=dataclasses.replace(cfg.evaluation_config,
                                                                             eval_prompts=prompts))
        applied["evaluation_config.eval_prompts"] = f"--eval_prompts {args.eval_prompts}"
    return cfg, applied
