"""Stage 1 (SFT data): read, clean, mix and tokenize conversation datasets into a sharded corpus.

    python scripts/02_prepare_sft_corpus.py --config config/sft_datasets/demo.json \\
        --output_dir data/sft_processed/demo --tokenizer_path checkpoints/tokenizer/spm8k_demo

Writes train_*.jsonl / val_*.jsonl shards, manifest.json, DATA_CARD.md and training_state.json
(see utils/data/shards.py for the contract the trainer relies on).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.cli_values import mapping, output_dir, positive_int  # noqa: E402
from utils.common.errors import run_cli  # noqa: E402
from utils.data.executors import EXECUTORS, make_executor  # noqa: E402
from utils.data.prepare import default_num_proc, load_dataset_config, prepare_corpus, with_local_copies  # noqa: E402

COPIES_ENV = "SFT_LOCAL_COPIES"
"""HUB_NAME=FILE pairs for machines without network, applied to every config that names those hub datasets."""


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="SFT dataset config, e.g. config/sft_datasets/demo.json")
    parser.add_argument("--output_dir", type=output_dir(), required=True, help="where the prepared corpus goes")
    parser.add_argument("--tokenizer_path", required=True,
                        help="HF tokenizer directory, or a .model with its HF directory beside it")
    parser.add_argument("--force", action="store_true", help="replace an existing output_dir")
    parser.add_argument("--num_proc", type=positive_int("--num_proc"), default=default_num_proc(),
                        help="tokenizer worker processes (default: all cores)")
    parser.add_argument("--strict", action="store_true", help="stop at the first malformed row")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local: this machine's processes; ray: the encoding as Ray tasks, reading, dedup and "
                        "the mixture on this machine (requirements-ray.txt, docs/DISTRIBUTED.md)")
    parser.add_argument("--ray_address", help="HOST:PORT of a Ray cluster's head, or auto (a node of a running "
                        "cluster); without it --executor ray starts a local Ray instance of --num_proc CPUs")
    parser.add_argument("--local_copy", action="append", type=mapping("--local_copy"), default=[],
                        metavar="HUB_NAME=FILE", help="read hub dataset HUB_NAME (a huggingface entry's dataset_name) "
                        "from a local .json/.jsonl/.parquet/.csv copy (repeatable; also the environment variable "
                        f"{COPIES_ENV}, comma-separated)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    config = load_dataset_config(args.config)
    config = with_local_copies(config, dict(args.local_copy), "--local_copy")  # the flag wins over the environment
    copies = dict(mapping(COPIES_ENV)(item) for item in os.environ.get(COPIES_ENV, "").split(",") if item.strip())
    hub = {d.dataset_name for d in config.datasets if d.type == "huggingface"}
    config = with_local_copies(config, {k: v for k, v in copies.items() if k in hub}, COPIES_ENV)
    executor = make_executor(args.executor, args.num_proc, args.ray_address) if args.executor == "ray" or \
        args.ray_address else None
    try:
        manifest = prepare_corpus(config, args.tokenizer_path, args.output_dir, force=args.force,
                                  num_proc=args.num_proc, strict=args.strict, config_path=args.config,
                                  executor=executor)
    finally:
        if executor is not None:
            executor.close()
    train = manifest["splits"]["train"]
    print(f"wrote {args.output_dir}: {train['conversations']} train examples in {train['num_shards']} "
          f"shard(s); see {Path(args.output_dir) / 'DATA_CARD.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
