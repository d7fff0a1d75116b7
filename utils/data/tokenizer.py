"""SentencePiece training, its export as an HF tokenizer directory, and loading.

Layout written by ``train_tokenizer``::

    <output_dir>/<name>.model    SentencePiece model (for sentencepiece users)
    <output_dir>/<name>.vocab    its vocabulary, one piece and score per line
    <output_dir>/<name>/         HF tokenizer directory (tokenizer.json, tokenizer_config.json,
                                 chat_template.jinja): what every stage loads, with plain
                                 ``transformers.AutoTokenizer.from_pretrained``

The HF directory is the canonical tokenizer: stages encode with it and fingerprint it.
"""
from __future__ import annotations

import difflib
import functools
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from utils.common.config_schema import setting
from utils.common.errors import UserError, check_readable, one_line
from utils.common.locks import exclusive
from utils.common.publish import atomic_dir
from utils.data.fingerprint import TOKENIZER_FILES, tokenizer_fingerprint
from utils.data.text_sources import TextSource, iter_documents
from utils.model.gguf import hf_dir_for_gguf

ANCHOR = "\U0010FFFD"
"""Added to a private copy of the tokenizer only (``plain_backend``); data containing it cannot be encoded."""

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<s>", "</s>"
IM_START, IM_END = "<|im_start|>", "<|im_end|>"
CONTROL_TOKENS = (IM_START, IM_END)

TOOLS_HEADER = ('# Tools\nYou may call the functions below. To call one, reply with <tool_call>{"name": <function name>, '
                '"arguments": <JSON object>}</tool_call>; its result comes back as a tool message.')
"""The project's tool format (``renderers.render_chatml``): this header and one JSON definition per line close the
system turn; calls follow an assistant's text; results are ``tool`` turns."""
# ChatML, with the project's tool format. The {% generation %} block marks assistant text (and calls) for tools
# that ask the template for assistant masks (transformers' return_assistant_tokens_mask).
CHATML_TEMPLATE = (
    "{%- set system_first = messages and messages[0]['role'] == 'system' -%}"
    "{%- if tools -%}"
    "{{- '<|im_start|>system\\n' -}}"
    "{%- if system_first -%}{{- messages[0]['content'] + '\\n\\n' -}}{%- endif -%}"
    "{{- '" + TOOLS_HEADER.replace("\n", "\\n") + "' -}}"
    "{%- for tool in tools -%}{{- '\\n' + (tool | tojson) -}}{%- endfor -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- for message in messages -%}"
    "{%- if tools and system_first and loop.first -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{% generation %}"
    "{%- if message.reasoning_content -%}"
    "{{- '<think>\\n' + message.reasoning_content + '\\n</think>\\n' -}}"
    "{%- endif -%}"
    "{{- message['content'] -}}"
    "{%- for call in message.tool_calls or [] -%}"
    "{%- if message['content'] or not loop.first -%}{{- '\\n' -}}{%- endif -%}"
    "{{- '<tool_call>' + ({'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson)"
    " + '</tool_call>' -}}"
    "{%- endfor -%}"
    "{{- '<|im_end|>' -}}{% endgeneration %}"
    "{{- '\\n' -}}"
    "{%- else -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def train_sentencepiece(text_file: Path, model_prefix: Path, vocab_size: int, model_type: str,
                        character_coverage: float, seed: int, max_sentence_length: int,
                        num_threads: int) -> None:
    """Train a byte-fallback SentencePiece model that keeps whitespace and newlines as they are."""
    import sentencepiece as spm

    spm.set_random_generator_seed(seed)
    try:
        spm.SentencePieceTrainer.train(
            input=str(text_file), model_prefix=str(model_prefix), vocab_size=vocab_size,
            model_type=model_type, character_coverage=character_coverage,
            pad_id=0, unk_id=1, bos_id=2, eos_id=3,
            pad_piece=PAD, unk_piece=UNK, bos_piece=BOS, eos_piece=EOS,
            # Control symbols are never produced from text: dataset strings that look
            # like "<|im_start|>" stay plain text.
            control_symbols=list(CONTROL_TOKENS),
            user_defined_symbols=["\n", "\t"],
            byte_fallback=True, split_digits=True,
            normalization_rule_name="identity", remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True, max_sentence_length=max_sentence_length,
            shuffle_input_sentence=True, seed_sentencepiece_size=1_000_000,
            num_threads=num_threads, minloglevel=2,
        )
    except RuntimeError as err:
        hint = " (lower vocab_size or add more text)" if "vocab_size" in str(err) else ""
        raise UserError(f"sentencepiece training failed: {err}{hint}") from None


def export_hf_tokenizer(model_file: Path, out_dir: Path) -> None:
    """Write an HF tokenizer directory equivalent to the SentencePiece model."""
    from transformers import LlamaTokenizer
    from transformers.tokenization_utils_sentencepiece import SentencePieceExtractor

    vocab, _scores, merges = SentencePieceExtractor(str(model_file)).extract()
    tok = LlamaTokenizer(
        vocab=vocab, merges=merges, unk_token=UNK, bos_token=BOS, eos_token=EOS, pad_token=PAD,
        add_bos_token=False, add_eos_token=False, add_prefix_space=True,
    )
    tok.add_special_tokens({"additional_special_tokens": list(CONTROL_TOKENS)})
    tok.chat_template = CHATML_TEMPLATE
    tok.model_max_length = 1 << 20
    tok.save_pretrained(str(out_dir))


GUIDE_DIR = Path("data/tokenizer")
"""Where the SFT guide's commands look for tokenizers (data/tokenizer/spm32k.model)."""
WRITTEN_DIR = Path("checkpoints/tokenizer")
"""Where scripts/00_train_tokenizer.py writes them (the configs' output_dir)."""


def hf_dir_for(path: str | Path) -> Path:
    """The HF tokenizer directory for a tokenizer path (a directory, or a .model beside one)."""
    path = resolve_tokenizer_path(path)
    check_readable(path, "tokenizer")
    if path.suffix == ".gguf":
        return hf_dir_for_gguf(path)
    if path.is_dir():
        return path
    if path.suffix == ".model" and path.is_file():
        sibling = path.with_suffix("")
        if (sibling / "tokenizer_config.json").is_file():
            return sibling
        raise UserError(f"{path}: no HF tokenizer directory beside it (expected {sibling}/); "
                        "re-run `make tokenizer-train-mix` or pass the tokenizer directory")
    raise UserError(f"{path}: tokenizer not found; pass an HF tokenizer directory or a .model "
                    "written by scripts/00_train_tokenizer.py (run `make tokenizer-train-mix`)")


def resolve_tokenizer_path(path: str | Path) -> Path:
    """``path``, or for a missing ``data/tokenizer/X`` the ``checkpoints/tokenizer/X`` the tokenizer stage wrote
    (said once, in one line). A missing path with a near namesake beside it is refused naming the namesake."""
    path = Path(path)
    if path.exists() or path.suffix == ".gguf":
        return path
    if path.parts[:2] == GUIDE_DIR.parts and WRITTEN_DIR.joinpath(*path.parts[2:]).exists():
        written = WRITTEN_DIR.joinpath(*path.parts[2:])
        _note_once(f"{path}: not found; using {written}, where make tokenizer-train-mix writes tokenizers")
        return written
    near = _namesakes(path)
    if near:
        raise UserError(f"{path}: tokenizer not found; did you mean {near[0]}? (make tokenizer-train-mix writes "
                        f"tokenizers to {WRITTEN_DIR}/)")
    return path


def _namesakes(path: Path) -> list[str]:
    """Existing tokenizer paths whose name is a near miss of ``path``'s (a typo: smp32k for spm32k)."""
    folders = {path.parent}
    if path.parts[:2] == GUIDE_DIR.parts:
        folders.add(WRITTEN_DIR.joinpath(*path.parts[2:-1]))
    found = [p for folder in folders if folder.is_dir() for p in folder.iterdir() if p.suffix == path.suffix]
    close = difflib.get_close_matches(path.name, [p.name for p in found], n=1, cutoff=0.75)
    return [str(p) for p in found if p.name in close]


@functools.lru_cache(maxsize=None)
def _note_once(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def load_tokenizer(path: str | Path, trust_remote_code: bool = False):
    """Load the HF tokenizer at ``path`` (directory or .model beside one) with plain transformers."""
    from transformers import AutoTokenizer

    hf_dir = hf_dir_for(path)
    check_tokenizer_files(hf_dir)
    try:
        tok = AutoTokenizer.from_pretrained(str(hf_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"{hf_dir}: cannot load tokenizer ({one_line(err)[:300]}); pass --tokenizer_path a "
                        "complete tokenizer directory") from None
    if tok.pad_token_id is None:
        raise UserError(f"{hf_dir}: tokenizer has no pad token; set pad_token in tokenizer_config.json")
    return tok


def check_tokenizer_files(hf_dir: Path) -> None:
    """Refuse a directory with none of the files a tokenizer is read from (an empty one, or a model directory
    saved without its tokenizer), naming what is missing and what to pass."""
    if not hf_dir.is_dir() or any((hf_dir / name).is_file() for name in TOKENIZER_FILES):
        return
    what = ("is a model directory without tokenizer files" if (hf_dir / "config.json").is_file()
            else "is empty" if not any(hf_dir.iterdir()) else "holds no tokenizer files")
    raise UserError(f"{hf_dir}: {what} (no tokenizer.json, tokenizer_config.json or tokenizer.model); pass "
                    "--tokenizer_path the tokenizer directory the model was trained with (e.g. the final/ of a run, "
                    "or one `make tokenizer-train-mix` wrote)")


def copy_tokenizer_files(src: str | Path, dst: Path) -> None:
    """Copy tokenizer files byte for byte, so the copy keeps the source's fingerprint."""
    src_dir = hf_dir_for(src)
    dst.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        if (src_dir / name).is_file():
            shutil.copyfile(src_dir / name, dst / name)


MODEL_TYPES = ("bpe", "unigram")
"""SentencePiece algorithms a tokenizer config may name."""


@dataclass
class TokenizerConfig:
    name: str = setting(pattern=r"^[A-Za-z0-9_.-]+$")
    """Output name: <output_dir>/<name>.model, <name>.vocab and the HF directory <name>/."""
    vocab_size: int = setting(minimum=300, maximum=1000000)
    """Vocabulary size, special and byte-fallback pieces included."""
    sources: list[TextSource] = setting(minItems=1)
    """Weighted text sources."""
    description: str = ""
    """Free text."""
    output_dir: str = "checkpoints/tokenizer"
    """Directory the tokenizer is written to."""
    model_type: str = setting("bpe", enum=MODEL_TYPES)
    """SentencePiece algorithm."""
    character_coverage: float = setting(1.0, exclusiveMinimum=0, maximum=1)
    """Share of characters covered by pieces; the rest falls back to bytes."""
    max_chars: int = setting(20_000_000, minimum=1000)
    """Characters of mixed text sampled for training (split between sources by weight)."""
    max_sentence_length: int = setting(16384, minimum=256)
    """Longest line (bytes) SentencePiece trains on; longer lines are split."""
    seed: int = setting(1234, minimum=0)
    """Seed of the text sampling and of SentencePiece."""


@dataclass
class TokenizerResult:
    model_file: Path
    hf_dir: Path
    fingerprint: str
    chars_per_source: dict[str, int]


def write_mixed_text(sources: list[TextSource], max_chars: int, out_file: Path,
                     max_passes: int = 20) -> dict[str, int]:
    """Write each source's share (by weight) of ``max_chars`` as lines; small sources repeat."""
    total_weight = sum(s.weight for s in sources) or 1.0
    written: dict[str, int] = {}
    with open(out_file, "w", encoding="utf-8") as handle:
        for src in sources:
            budget = int(max_chars * src.weight / total_weight)
            written[src.name] = _write_source(src, budget, handle, max_passes)
    return written


def _write_source(src: TextSource, budget: int, handle, max_passes: int) -> int:
    written = 0
    for _ in range(max_passes):
        before = written
        for doc in iter_documents(src):
            for line in doc.splitlines():
                if line.strip() and written < budget:
                    handle.write(line + "\n")
                    written += len(line) + 1
            if written >= budget:
                return written
        if written == before:
            raise UserError(f"source '{src.name}': no text found")
    return written


def train_tokenizer(cfg: TokenizerConfig, num_threads: int) -> TokenizerResult:
    """Train SentencePiece on the weighted mix and write .model, .vocab and the HF directory."""
    out_dir = Path(cfg.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with exclusive(out_dir / cfg.name, "--config output_dir"), atomic_dir(out_dir / cfg.name) as work:
        text_file = work / "train_text.txt"
        chars = write_mixed_text(cfg.sources, cfg.max_chars, text_file)
        train_sentencepiece(text_file, work / cfg.name, cfg.vocab_size, cfg.model_type,
                            cfg.character_coverage, cfg.seed, cfg.max_sentence_length, num_threads)
        text_file.unlink()
        for suffix in (".model", ".vocab"):
            shutil.move(work / f"{cfg.name}{suffix}", out_dir / f"{cfg.name}{suffix}")
        export_hf_tokenizer(out_dir / f"{cfg.name}.model", work)
    hf_dir = out_dir / cfg.name
    return TokenizerResult(out_dir / f"{cfg.name}.model", hf_dir, tokenizer_fingerprint(hf_dir), chars)


def whole_backend(tokenizer):
    """A copy of the fast tokenizer that matches special-token strings, with no truncation or padding."""
    from tokenizers import Tokenizer

    whole = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    whole.no_truncation()
    whole.no_padding()
    whole.encode_special_tokens = False
    return whole


def special_token_ids(tokenizer) -> dict[str, int]:
    """Every special token string of the tokenizer -> its id."""
    out = {t.content: i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    for token in tokenizer.all_special_tokens:
        tid = tokenizer.convert_tokens_to_ids(token)
        if isinstance(tid, int) and tid != tokenizer.unk_token_id or token == tokenizer.unk_token:
            out.setdefault(token, tid)
    return out


def plain_backend(tokenizer):
    """A copy of the fast tokenizer that reads special-token strings as text, plus the anchor token."""
    from tokenizers import AddedToken, Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise UserError(f"{tokenizer.name_or_path}: needs a fast (tokenizer.json) tokenizer")
    plain = Tokenizer.from_str(backend.to_str())
    plain.no_truncation()
    plain.no_padding()
    plain.encode_special_tokens = True
    plain.add_tokens([AddedToken(ANCHOR, special=False, normalized=False)])
    return plain, plain.token_to_id(ANCHOR)
