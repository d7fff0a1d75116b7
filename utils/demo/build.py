"""The embedded demo data set: made from nothing but the Python install, so no download is needed.

Three parts, all deterministic for a given seed (and, for the corpus, a given Python version):

* ``corpus/``: raw text for pretraining / domain adaptation, one ``.txt`` per document, taken from
  ``pydoc_data.topics`` (the language reference topics) and docstrings of a fixed list of stdlib modules;
* ``instruct/``: chat-format train/test JSONL of small tasks whose answers can be checked exactly,
  sized so a ~6M-parameter model can learn them in minutes on a CPU;
* ``transcripts/``: a few hand-written Markdown chats with the awkward cases a marker-based extractor
  must survive, plus ``PARTICIPANTS.json`` saying which markers each file uses.
"""
from __future__ import annotations

import json
import random
import sys
from collections import Counter
from pathlib import Path

from utils.common.errors import UserError
from utils.common.locks import exclusive
from utils.common.publish import atomic_dir
from utils.demo.corpus import corpus_documents
from utils.demo.domain import domain_conversations
from utils.demo.stories import story_documents
from utils.demo.tasks import (CITIES, COLORS, NAMES, TASKS, WORDS, build_test, build_train, prompt_key,
                              worked_documents)
from utils.demo.transcripts import PARTICIPANTS, TRANSCRIPTS

GENERATOR_VERSION = 3


# ---------------------------------------------------------------- writing

def _write(path: Path, text: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode("utf-8")
    path.write_bytes(data)  # bytes, so no platform newline translation
    return len(data)


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n" for row in rows)


def _split_counts(rows: list[dict]) -> dict:
    return {
        "total": len(rows),
        "multi_turn": sum(sum(m["role"] == "user" for m in r["messages"]) > 1 for r in rows),
        "with_system": sum(r["messages"][0]["role"] == "system" for r in rows),
        "per_task": dict(sorted(Counter(r["task"] for r in rows).items())),
    }


def _write_corpus(root: Path, stdlib: dict) -> dict:
    counts = {}
    groups = {**stdlib, "stories": story_documents(WORDS, NAMES, CITIES, COLORS)}
    for group, docs in groups.items():
        size = sum(_write(root / "corpus" / group / f"{name}.txt", text) for name, text in docs)
        counts[group] = {"documents": len(docs), "bytes": size}
    return counts


def _write_domain(root: Path, pydoc: list[tuple[str, str]], seed: int) -> dict:
    rows = domain_conversations(pydoc, seed)
    _write(root / "instruct" / "domain.jsonl", _jsonl(rows))
    return {"conversations": len(rows), "topics": len({r["task"] for r in rows})}


def _write_transcripts(root: Path) -> dict:
    for name, text in TRANSCRIPTS.items():
        _write(root / "transcripts" / name, text)
    _write(root / "transcripts" / "PARTICIPANTS.json",
           json.dumps(PARTICIPANTS, indent=2, sort_keys=True) + "\n")
    with_conversation = sum(bool(info["blocks"]) for info in PARTICIPANTS.values())
    return {"files": len(TRANSCRIPTS), "with_conversation": with_conversation}


def _write_instruct(root: Path, seed: int, num_train: int, num_test: int) -> dict:
    # One stream per split: the test items do not move when only --num_train changes (bar dedupe).
    train = build_train(random.Random(f"{seed}/train"), num_train)
    test = build_test(random.Random(f"{seed}/test"), num_test, train)
    seen = {prompt_key(row["messages"][-2:-1]) for row in train + test}
    rephrased = build_test(random.Random(f"{seed}/rephrased"), num_test, train, heldout=True, seen=seen)
    _write(root / "instruct" / "train.jsonl", _jsonl(train))
    _write(root / "instruct" / "test.jsonl", _jsonl(test))
    _write(root / "instruct" / "test_rephrased.jsonl", _jsonl(rephrased))
    worked = worked_documents(train)
    for name, text in worked:
        _write(root / "instruct" / "worked" / f"{name}.txt", text)
    return {"train": _split_counts(train), "test": _split_counts(test),
            "test_rephrased": _split_counts(rephrased), "worked_documents": len(worked)}


def _readme(manifest: dict) -> str:
    corpus, inst = manifest["corpus"], manifest["instruct"]
    args = (f"--seed {manifest['seed']} --num_train {inst['train']['total']} "
            f"--num_test {inst['test']['total']}")
    return f"""# Demo data (generated, do not edit)

Made by `python scripts/generate_demo_data.py {args}` (add `--output_dir` for another place)
with generator version {manifest['generator_version']} on Python {manifest['python_version']}.
Everything comes from the Python install itself; nothing was downloaded.

- `corpus/pydoc/*.txt`: {corpus['pydoc']['documents']} language-reference topics from `pydoc_data.topics`
  ({corpus['pydoc']['bytes']} bytes), one document per file.
- `corpus/docstrings/*.txt`: docstrings of {corpus['docstrings']['documents']} stdlib modules and their public
  classes and functions ({corpus['docstrings']['bytes']} bytes), one module per file.
- `corpus/stories/*.txt`: {corpus['stories']['documents']} books of generated short stories in plain English
  ({corpus['stories']['bytes']} bytes) over the words, names, cities and colours of the instructions, so
  that pre-training sees the vocabulary the instructions use (see utils/demo/stories.py).
- `instruct/train.jsonl` ({inst['train']['total']} conversations) and `instruct/test.jsonl`
  ({inst['test']['total']} held-out prompts with a `reference` answer) over {len(TASKS)} task families:
  {", ".join(TASKS)}. Answers are bare results, compared by exact match.
- `instruct/test_rephrased.jsonl` ({inst['test_rephrased']['total']} held-out prompts): the same families asked
  in phrasings that no train conversation uses (`PHRASINGS` in utils/demo/tasks.py), so a model that
  follows the instruction, rather than recalling its wording, answers them too.
- `instruct/worked/*.txt`: the same train conversations as plain `User:`/`Assistant:` text in
  {inst['worked_documents']} files, part of the tiny model's pre-training mix (never the test questions).
- `instruct/domain.jsonl`: {manifest['domain']['conversations']} questions about the language reference (the CPT
  domain, `corpus/pydoc`) over {manifest['domain']['topics']} topics, each answered with the opening paragraph of
  its section (utils/demo/domain.py): the domain data of the CPT -> IFT demo.
- `transcripts/*.md`: {manifest['transcripts']['files']} Markdown chats for the conversation extractor;
  `PARTICIPANTS.json` gives each file's speaker markers per role and `blocks`, the role of each marker
  in order (same-speaker runs not merged). A marker counts only at the start of a line, outside front
  matter and fenced code; a heading marker (`## Human`) must be the whole line.
- `manifest.json`: these counts per family and split.
"""


def build_demo_data(root: Path, seed: int, num_train: int, num_test: int) -> dict:
    """Write every part into ``root`` (an empty directory) and return the manifest."""
    stdlib = corpus_documents()
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "python_version": ".".join(map(str, sys.version_info[:3])),
        "corpus": _write_corpus(root, stdlib),
        "domain": _write_domain(root, stdlib["pydoc"], seed),
        "instruct": _write_instruct(root, seed, num_train, num_test),
        "transcripts": _write_transcripts(root),
    }
    _write(root / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    _write(root / "README.md", _readme(manifest))
    return manifest


def generate_demo_data(output_dir: Path, seed: int = 1234, num_train: int = 20000, num_test: int = 400,
                       force: bool = False) -> dict:
    """Build the demo data beside ``output_dir`` and rename it into place; returns the manifest.

    An existing ``output_dir`` is refused unless ``force``, and then replaced only once the new one
    is complete.
    """
    for flag, value in (("--num_train", num_train), ("--num_test", num_test)):
        if value < len(TASKS):
            raise UserError(f"{flag} {value}: must be at least {len(TASKS)} so every task family appears")
    with exclusive(output_dir), atomic_dir(output_dir, force=force) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; the published data set is meant to be readable
        return build_demo_data(tmp, seed, num_train, num_test)
