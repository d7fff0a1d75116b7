"""What the start-up packing check costs: for each model type, the check run once (a cache miss: the twin built,
one step packed and alone, generation) and the verdict read back from the cache, as a later run of the same type
and transformers version does. Configs are transformers' defaults for each type (full-size head sizes, windows
and caps), shrunk by the check itself (utils/model/twin.py). Prints a Markdown table for docs/BENCHMARKS.md.

    python scripts/benchmark_packing_check.py                       # every type the tests train
    python scripts/benchmark_packing_check.py --types qwen3 gemma2
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.errors import UserError, run_cli  # noqa: E402

TYPES = ("llama", "gpt2", "gpt_neox", "qwen2", "gemma", "phi3", "mistral", "qwen3", "qwen3_moe", "gemma2",
         "gemma3_text", "olmo2", "smollm3", "granite", "phi", "starcoder2", "mixtral")


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--types", nargs="+", default=list(TYPES), help="model types (transformers' names)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    # transformers and torch cost seconds to import; deferred so --help stays fast
    import torch
    import transformers
    from transformers import AutoConfig

    from utils.model import packing_check

    with tempfile.TemporaryDirectory() as cache:
        os.environ["SFT_PIPELINE_CACHE"] = cache  # a cold cache of its own, never the user's
        print(f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} "
              "threads\n\n| model type | verdict | check (s) | cached (s) | features |\n|---|---|---|---|---|")
        for model_type in args.types:
            try:
                config = AutoConfig.for_model(model_type)
            except ValueError:
                raise UserError(f"--types {model_type}: not a model type transformers knows") from None
            packing_check._memo.clear()
            start = time.perf_counter()
            verdict = packing_check.verdict_for(config)
            cold = time.perf_counter() - start
            packing_check._memo.clear()
            start = time.perf_counter()
            again = packing_check.verdict_for(config)
            warm = time.perf_counter() - start
            if not again.cached:
                raise UserError(f"{model_type}: the verdict was not read back from the cache in {cache}")
            print(f"| {model_type} | {'packed == alone' if verdict.ok else 'refused'} | {cold:.2f} | {warm:.3f} | "
                  f"{', '.join(verdict.features) or verdict.problem or 'plain causal attention'} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
