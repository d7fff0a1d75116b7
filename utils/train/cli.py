"""Command-line options shared by the training stages (01 pre-training/CPT, 03 SFT)."""
from __future__ import annotations

import argparse

from utils.train.params import TrainingParams


def add_run_args(parser: argparse.ArgumentParser) -> None:
    """--resume_from_checkpoint, --max_steps, --seed, --trust_remote_code."""
    parser.add_argument("--resume_from_checkpoint", help="a checkpoint-N dir, or 'auto' for the newest complete one")
    parser.add_argument("--max_steps", type=int, help="override training_params.max_steps")
    parser.add_argument("--seed", type=int, help="override training_params.seed")
    parser.add_argument("--trust_remote_code", action="store_true", help="allow model code from the checkpoint")


def apply_overrides(params: TrainingParams, args: argparse.Namespace) -> dict:
    """Apply --max_steps/--seed to the config; returns {field: flag} for the run record."""
    applied = {}
    for name in ("max_steps", "seed"):
        value = getattr(args, name)
        if value is not None:
            setattr(params, name, value)
            applied[name] = f"--{name}"
    return applied
