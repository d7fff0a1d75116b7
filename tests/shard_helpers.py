"""Read a prepared corpus's examples in tests, through the shard parser every reader uses."""
from __future__ import annotations

from pathlib import Path
from typing import Iterator

from utils.data.shards import load_manifest, parse_example


def shard_examples(data_dir: str | Path, split: str) -> Iterator[dict]:
    """The examples of ``split`` in shard order: dicts with input_ids, labels (lists) and source."""
    for shard in load_manifest(Path(data_dir))["splits"].get(split, {}).get("shards", []):
        path = Path(data_dir) / shard["file"]
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            ids, labels, source = parse_example(line, f"{path}:{number}")
            yield {"input_ids": ids.tolist(), "labels": labels.tolist(), "source": source}
