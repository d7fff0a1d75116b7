"""Write config/schemas/*.schema.json and docs/CONFIG.md from the config dataclasses (make config-docs).

    python scripts/config_docs.py            # write them
    python scripts/config_docs.py --check    # exit 1 naming each file that differs from what would be written
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.config_docs import ConfigKind, render  # noqa: E402
from utils.common.config_schema import Generator, Home, SchemaFile, dump  # noqa: E402
from utils.data.prepare import SFTDatasetConfig  # noqa: E402
from utils.data.dataset_entry import DatasetSpec  # noqa: E402
from utils.data.text_sources import TextSource  # noqa: E402
from utils.data.tokenizer import TokenizerConfig  # noqa: E402
from utils.parallel.lora import LoraSettings  # noqa: E402
from utils.train.config import PretrainConfig, SFTTrainingConfig, TrainingParams  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = [
    SchemaFile("common", None, "Shared parts of the pre-training and SFT configs"),
    SchemaFile("text_source", TextSource, "A raw-text source (tokenizer training, pre-training/CPT)"),
    SchemaFile("tokenizer", TokenizerConfig, "Tokenizer training (scripts/00_train_tokenizer.py)"),
    SchemaFile("pretrain", PretrainConfig,
               "Pre-training from scratch or continued pre-training (scripts/01_pretrain.py)"),
    SchemaFile("sft_dataset", SFTDatasetConfig, "SFT dataset config",
               "Which conversation datasets to read, how to turn their rows into chat messages, filter and mix them, "
               "and how to cut the tokenized corpus into shards (scripts/02_prepare_sft_corpus.py)."),
    SchemaFile("sft_training", SFTTrainingConfig, "SFT training (scripts/03_sft_industrial.py)"),
]
HOMES = {
    TrainingParams: Home("common", "training_params"),
    LoraSettings: Home("common", "lora_config", nullable=True),
    TextSource: Home("text_source"),
    DatasetSpec: Home("sft_dataset", "dataset"),
}
"""The dataclasses written once and referenced ($ref) wherever they are used."""
KINDS: list[ConfigKind] = [
    ("tokenizer", "Tokenizer training", TokenizerConfig, "config/tokenizer/*.json → scripts/00_train_tokenizer.py"),
    ("pretrain", "Pre-training and CPT", PretrainConfig, "config/pretrain/*.json → scripts/01_pretrain.py"),
    ("sft_dataset", "SFT dataset preparation", SFTDatasetConfig,
     "config/sft_datasets/*.json → scripts/02_prepare_sft_corpus.py"),
    ("sft_training", "SFT training", SFTTrainingConfig, "config/sft_training/*.json → scripts/03_sft_industrial.py"),
]
"""The sections of docs/CONFIG.md."""


def generated() -> dict[str, str]:
    """{path relative to the repository: text} of every file this script writes."""
    generator = Generator(HOMES)
    schemas = {spec.name: generator.schema(spec) for spec in SCHEMAS}
    files = {f"config/schemas/{name}.schema.json": dump(schema) for name, schema in schemas.items()}
    files["docs/CONFIG.md"] = render(KINDS, schemas)
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a committed file differs")
    args = parser.parse_args()
    stale = []
    for rel, text in generated().items():
        path = ROOT / rel
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(rel)
        if not args.check:
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            os.replace(tmp, path)
    if args.check and stale:
        print(f"stale: {', '.join(stale)}; run `make config-docs`", file=sys.stderr)
        return 1
    for rel in stale:
        print(f"wrote {rel}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
