"""Stage 1 (raw text, ahead of training): tokenize a pre-training config's text sources into token shards.

    python scripts/01_prepare_text_corpus.py --config config/pretrain/tiny.json \\
        --tokenizer_path checkpoints/tokenizer/spm8k_demo --output_dir data/text_processed/tiny --num_proc 2
    python scripts/01_pretrain.py --config config/pretrain/tiny.json --tokenizer_path ... \\
        --data_dirs data/text_processed/tiny

Reads the config's data.sources and data.val_ratio (the rest of the config is for training). Writes
train_*.bin / val_*.bin token shards, manifest.json (tokenizer SHA256, sources, counts, per-shard sha256),
DATA_CARD.md and training_state.json; see utils/data/text_corpus.py. --executor ray runs the tasks on a Ray
cluster (docs/DISTRIBUTED.md).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.cli_values import output_dir, positive_int, positive_number  # noqa: E402
from utils.common.config import load_config  # noqa: E402
from utils.common.errors import run_cli  # noqa: E402
from utils.data.executors import EXECUTORS, make_executor  # noqa: E402
from utils.data.prepare import default_num_proc  # noqa: E402
from utils.data.text_corpus import DEFAULT_PARTITION_MB, TextCorpusSpec, prepare_text_corpus  # noqa: E402
from utils.train.config import PretrainConfig  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="pre-training config whose data.sources are prepared, "
                        "e.g. config/pretrain/tiny.json")
    parser.add_argument("--tokenizer_path", required=True, help="HF tokenizer dir (or its .model)")
    parser.add_argument("--output_dir", type=output_dir(), help="default: data/text_processed/<config name>")
    parser.add_argument("--force", action="store_true", help="replace an existing output_dir")
    parser.add_argument("--num_proc", type=positive_int("--num_proc"), default=default_num_proc(),
                        help="worker processes, one core each (default: all cores); with --executor ray and no "
                        "--ray_address, the CPUs of the local Ray instance")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local: this machine's processes; ray: Ray tasks (requirements-ray.txt)")
    parser.add_argument("--ray_address", help="HOST:PORT of a Ray cluster's head, or auto (a node of a running "
                        "cluster); without it --executor ray starts a local Ray instance")
    parser.add_argument("--partition_mb", type=positive_number("--partition_mb"), default=DEFAULT_PARTITION_MB,
                        help="input megabytes per task (the shard size follows from it)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, "pretrain", PretrainConfig)
    spec = TextCorpusSpec(cfg.name, cfg.data.sources, cfg.data.val_ratio, cfg.description)
    out = Path(args.output_dir or f"data/text_processed/{cfg.name}")
    executor = make_executor(args.executor, args.num_proc, args.ray_address)
    try:
        manifest = prepare_text_corpus(spec, args.tokenizer_path, out, executor, force=args.force,
                                       partition_mb=args.partition_mb, config_path=args.config)
    finally:
        executor.close()
    train = manifest["splits"]["train"]
    print(f"wrote {out}: {train['total_tokens']:,} train tokens in {train['num_shards']} shard(s); see "
          f"{out / 'DATA_CARD.md'}; train on it with scripts/01_pretrain.py --data_dirs {out}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
