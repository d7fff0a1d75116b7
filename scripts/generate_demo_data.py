"""Write the embedded demo data set (corpus, instruction splits, transcripts) from the Python install alone.

    python scripts/generate_demo_data.py --output_dir data/demo --seed 1234

Same seed and Python version give byte-identical files. An existing output directory is kept unless
``--force``, and even then replaced only once the new one is complete.
"""
import argparse
import sys
import time
from pathlib import Path
from typing import Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.errors import run_cli  # noqa: E402
from utils.demo.build import generate_demo_data  # noqa: E402


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", type=Path, default=Path("data/demo"), help="where the data set goes")
    parser.add_argument("--seed", type=int, default=1234, help="seed for the instruction splits")
    parser.add_argument("--num_train", type=int, default=20000, help="train conversations")
    parser.add_argument("--num_test", type=int, default=400, help="held-out test prompts")
    parser.add_argument("--force", action="store_true", help="replace an existing --output_dir")
    return parser.parse_args(argv)


def summary(output_dir: Path, manifest: dict, seconds: float) -> str:
    corpus, inst = manifest["corpus"], manifest["instruct"]
    docs = sum(part["documents"] for part in corpus.values())
    size = sum(part["bytes"] for part in corpus.values())
    return (f"wrote {output_dir} in {seconds:.1f}s: corpus {docs} documents ({size} bytes), "
            f"instruct {inst['train']['total']} train / {inst['test']['total']} test "
            f"over {len(inst['train']['per_task'])} tasks, {manifest['transcripts']['files']} transcripts")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    start = time.perf_counter()
    manifest = generate_demo_data(args.output_dir, seed=args.seed, num_train=args.num_train,
                                  num_test=args.num_test, force=args.force)
    print(summary(args.output_dir, manifest, time.perf_counter() - start))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
