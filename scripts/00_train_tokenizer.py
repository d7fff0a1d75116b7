"""Stage 0: train the SentencePiece tokenizer on a weighted text mix and export it for transformers."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.config import load_config  # noqa: E402
from utils.common.errors import run_cli  # noqa: E402
from utils.data.tokenizer import TokenizerConfig, load_tokenizer, train_tokenizer  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", required=True, help="tokenizer config, e.g. config/tokenizer/spm8k_demo.json")
    parser.add_argument("--output_dir", help="override the config's output_dir")
    parser.add_argument("--num_threads", type=int, default=os.cpu_count() or 1)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = load_config(args.config, "tokenizer", TokenizerConfig)
    if args.output_dir:
        cfg = dataclasses.replace(cfg, output_dir=args.output_dir)
    start = time.perf_counter()
    result = train_tokenizer(cfg, args.num_threads)
    tok = load_tokenizer(result.hf_dir)
    sample = "def add(a, b):\n    return a + b  # 12 + 30 = 42"
    ids = tok(sample, add_special_tokens=False)["input_ids"]
    for name, chars in result.chars_per_source.items():
        print(f"  source {name}: {chars:,} characters")
    print(f"tokenizer: {result.model_file} and {result.hf_dir}/ (vocab {len(tok)}, "
          f"sha256 {result.fingerprint[:16]}..., {time.perf_counter() - start:.1f}s)")
    print(f"  sample: {len(sample)} chars -> {len(ids)} tokens; round trip "
          f"{'ok' if tok.decode(ids) == sample else 'CHANGED'}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
