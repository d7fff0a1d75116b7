"""Write docs/CONFIG.md from the JSON Schemas and the config dataclasses (make docs-config).

    python scripts/config_docs.py > docs/CONFIG.md
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from utils.common.config_docs import ConfigKind, render  # noqa: E402
from utils.data.prepare import SFTDatasetConfig  # noqa: E402
from utils.data.tokenizer import TokenizerConfig  # noqa: E402
from utils.train.config import PretrainConfig, SFTTrainingConfig  # noqa: E402

KINDS: list[ConfigKind] = [
    ("tokenizer", "Tokenizer training", TokenizerConfig, "config/tokenizer/*.json → scripts/00_train_tokenizer.py"),
    ("pretrain", "Pre-training and CPT", PretrainConfig, "config/pretrain/*.json → scripts/01_pretrain.py"),
    ("sft_dataset", "SFT dataset preparation", SFTDatasetConfig,
     "config/sft_datasets/*.json → scripts/02_prepare_sft_corpus.py"),
    ("sft_training", "SFT training", SFTTrainingConfig, "config/sft_training/*.json → scripts/03_sft_industrial.py"),
]


def main() -> int:
    print(render(KINDS), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
