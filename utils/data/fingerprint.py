"""The tokenizer fingerprint: one SHA256 that every stage compares.

Exactly which bytes are hashed:

* a file (e.g. ``spm8k_demo.model``): SHA256 of the file's bytes, nothing else;
* a directory (an HF tokenizer directory, or a model directory that carries one):
  SHA256 over the files named in ``TOKENIZER_FILES`` that exist in it, in that
  (sorted) order, each contributing ``name + b"\\0" + str(size) + b"\\0" + content``.
  Model weights, configs, READMEs and anything else in the directory are not hashed,
  so a model directory and the tokenizer directory it was copied from share a
  fingerprint, while a changed vocabulary, special token or chat template changes it.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from utils.common.errors import UserError
from utils.common.hashing import sha256_file

TOKENIZER_FILES = (
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
    "merges.txt",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer.model",
    "tokenizer_config.json",
    "vocab.json",
)

def tokenizer_fingerprint(path: str | Path) -> str:
    """SHA256 of a tokenizer ``.model`` file or of the tokenizer files of a directory."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    if not path.is_dir():
        raise UserError(f"{path}: tokenizer not found (expected a .model file or a tokenizer directory)")
    digest = hashlib.sha256()
    found = 0
    for name in TOKENIZER_FILES:
        file = path / name
        if file.is_file():
            found += 1
            data = file.read_bytes()
            digest.update(name.encode() + b"\0" + str(len(data)).encode() + b"\0" + data)
    if not found:
        raise UserError(f"{path}: no tokenizer files in this directory (looked for {', '.join(TOKENIZER_FILES)})")
    return digest.hexdigest()
