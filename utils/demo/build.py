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

import hashlib
import importlib
import inspect
import json
import random
import subprocess
import sys
import warnings
from collections import Counter
from pathlib import Path
from typing import Callable

from utils.common.atomic import atomic_dir
from utils.demo.stories import story_documents
from utils.common.errors import UserError

ROOT = Path(__file__).resolve().parents[2]
GENERATOR_VERSION = 2
SYSTEM_RATE = 0.20
MULTI_TURN_RATE = 0.15
MAX_DRAWS_PER_TEST_ITEM = 1000

WORDS = ("apple", "bird", "box", "cake", "desk", "egg", "fish", "game", "hat", "ink", "jam", "kite",
         "lamp", "leaf", "moon", "nut", "owl", "pen", "queen", "rain", "road", "star", "sun", "tree",
         "van", "wolf", "yarn", "zoo")
NAMES = ("Ann", "Ben", "Cara", "Dan", "Eva", "Finn", "Gus", "Hana", "Ivan", "Jo", "Kim", "Leo",
         "Mia", "Ned", "Omar", "Pia")
CITIES = ("Cairo", "Dakar", "Kyiv", "Lima", "Oslo", "Paris", "Perth", "Quito", "Rome", "Seoul")
COLORS = ("black", "blue", "gold", "gray", "green", "pink", "red", "white")
SYSTEM_PROMPTS = (
    "You are a precise assistant. Answer with the result only.",
    "You are a helpful assistant. Reply with just the answer.",
    "Answer exactly, with no extra words.",
    "You are a careful assistant for small data tasks.",
)


# ---------------------------------------------------------------- task families
# Each returns (user_prompt, answer). The few paraphrases per family are deliberate: enough variety
# that the model must read the instruction, few enough that a tiny model sees each one often.
# Items are whole words written with spaces between them: every item is then one token, the same
# token in the prompt and in the answer, which is what lets a ~6M-parameter model learn to look
# items up in its prompt within minutes. (Bracketed, comma-separated lists of multi-digit numbers
# split items into several tokens around repeated separators; trained from random weights for 1,500
# steps, the tiny model stayed under 12% exact match on them, against ~70% on word lists.)

def _say(rng: random.Random, templates: tuple[str, ...], **fields) -> str:
    return rng.choice(templates).format(**fields)


def random_words(rng: random.Random, lo: int = 3, hi: int = 6) -> list[str]:
    """Distinct words, so that 'which comes after' and membership 'no' probes are well defined."""
    return rng.sample(WORDS, rng.randint(lo, hi))


def gen_copy_words(rng: random.Random, words: list[str] | None = None) -> tuple[str, str]:
    words = words or random_words(rng)
    templates = ("Repeat the words: {W}", "Copy exactly: {W}", "Say these words again: {W}")
    return _say(rng, templates, W=" ".join(words)), " ".join(words)


def gen_reverse_words(rng: random.Random, words: list[str] | None = None) -> tuple[str, str]:
    words = words or random_words(rng)
    templates = ("Reverse the words: {W}", "Write these words in reverse order: {W}",
                 "Say the words backwards: {W}")
    return _say(rng, templates, W=" ".join(words)), " ".join(words[::-1])


def gen_sort_words(rng: random.Random, words: list[str] | None = None) -> tuple[str, str]:
    words = words or random_words(rng)
    templates = ("Sort the words: {W}", "Put these words in alphabetical order: {W}",
                 "Write the words sorted from A to Z: {W}")
    return _say(rng, templates, W=" ".join(words)), " ".join(sorted(words))


def gen_count_words(rng: random.Random, words: list[str] | None = None) -> tuple[str, str]:
    words = words or random_words(rng, 1, 8)
    templates = ("How many words are in: {W}?", "Count the words: {W}", "How many words do you see? {W}")
    return _say(rng, templates, W=" ".join(words)), str(len(words))


def gen_first_word(rng: random.Random, words: list[str] | None = None) -> tuple[str, str]:
    words = words or random_words(rng)
    templates = ("What is the first word in: {W}?", "Give the first word: {W}", "Which word comes first? {W}")
    return _say(rng, templates, W=" ".join(words)), words[0]


def gen_last_word(rng: random.Random, words: list[str] | None = None) -> tuple[str, str]:
    words = words or random_words(rng)
    templates = ("What is the last word in: {W}?", "Give the last word: {W}", "Which word comes last? {W}")
    return _say(rng, templates, W=" ".join(words)), words[-1]


def gen_next_word(rng: random.Random, words: list[str] | None = None) -> tuple[str, str]:
    words = words or random_words(rng)
    i = rng.randrange(len(words) - 1)
    templates = ("Which word comes after {x} in: {W}?", "In {W}, what follows {x}?",
                 "Give the word after {x}: {W}")
    return _say(rng, templates, x=words[i], W=" ".join(words)), words[i + 1]


def gen_membership(rng: random.Random, words: list[str] | None = None) -> tuple[str, str]:
    words = words or random_words(rng)
    present = rng.random() < 0.5
    probe = rng.choice(words if present else [w for w in WORDS if w not in words])
    templates = ("Is {x} in: {W}? Answer yes or no.", "Does the list {W} contain {x}?",
                 "Is {x} one of these words? {W}")
    return _say(rng, templates, x=probe, W=" ".join(words)), "yes" if present else "no"


def gen_uppercase(rng: random.Random, words: list[str] | None = None) -> tuple[str, str]:
    text = " ".join(words or random_words(rng, 1, 4))
    templates = ("Convert to uppercase: {t}", "Write in capital letters: {t}", "Uppercase this: {t}")
    return _say(rng, templates, t=text), text.upper()


def gen_lowercase(rng: random.Random, words: list[str] | None = None) -> tuple[str, str]:
    text = " ".join(words or random_words(rng, 1, 4))
    templates = ("Convert to lowercase: {t}", "Write in small letters: {t}", "Lowercase this: {t}")
    return _say(rng, templates, t=text.upper()), text


FIELD_POOLS = {"name": NAMES, "city": CITIES, "color": COLORS}


def _random_record(rng: random.Random) -> dict[str, str]:
    """Two or three fields, each with a one-token value."""
    fields = rng.sample(sorted(FIELD_POOLS), rng.randint(2, 3))
    return {f: rng.choice(FIELD_POOLS[f]) for f in fields}


def _record_text(record: dict[str, str]) -> str:
    return " ".join(f"{f.title()}: {v}." for f, v in record.items())


def gen_extract_field(rng: random.Random) -> tuple[str, str]:
    record = _random_record(rng)
    asked = rng.choice(list(record))
    templates = ("{r} What is the {f}?", "Read this: {r} What is the {f}?", "{r} Give the {f}.")
    return _say(rng, templates, r=_record_text(record), f=asked), record[asked]


def gen_make_record(rng: random.Random) -> tuple[str, str]:
    record = _random_record(rng)
    pairs = " ".join(f"{f} {v}" for f, v in record.items())
    templates = ("Write as a record: {p}", "Format as field: value pairs: {p}", "Make a record from: {p}")
    return _say(rng, templates, p=pairs), _record_text(record)


TASKS: dict[str, Callable[..., tuple[str, str]]] = {
    "copy_words": gen_copy_words,
    "reverse_words": gen_reverse_words,
    "sort_words": gen_sort_words,
    "count_words": gen_count_words,
    "first_word": gen_first_word,
    "last_word": gen_last_word,
    "next_word": gen_next_word,
    "membership": gen_membership,
    "uppercase": gen_uppercase,
    "lowercase": gen_lowercase,
    "extract_field": gen_extract_field,
    "make_record": gen_make_record,
}
# Families that take a ``words`` list, so a second turn can ask something else about the same words.
LIST_TASKS = ("copy_words", "reverse_words", "sort_words", "count_words", "first_word", "last_word",
              "next_word", "membership", "uppercase", "lowercase")


def check_answer(task: str, prediction: str, reference: str) -> bool:
    """Exact match after trimming surrounding whitespace.

    ``task`` is taken so a family can get its own rule later without changing callers; today every
    family's answer is a bare string that must match exactly.
    """
    return prediction.strip() == reference.strip()


# ---------------------------------------------------------------- conversations and splits

def _msg(role: str, content: str) -> dict:
    return {"role": role, "content": content}


def _exchanges(rng: random.Random, task: str) -> list[tuple[str, str]]:
    """One (prompt, answer) pair, or two where the last one is ``task``."""
    if rng.random() >= MULTI_TURN_RATE:
        return [TASKS[task](rng)]
    if task in LIST_TASKS and rng.random() < 0.5:
        words = random_words(rng)
        first = rng.choice([t for t in LIST_TASKS if t != task])
        return [TASKS[first](rng, words), TASKS[task](rng, words)]
    return [TASKS[rng.choice(tuple(TASKS))](rng), TASKS[task](rng)]


def make_conversation(rng: random.Random, task: str) -> list[dict]:
    """Messages ending with the assistant's answer to a ``task`` question."""
    messages = [_msg("system", rng.choice(SYSTEM_PROMPTS))] if rng.random() < SYSTEM_RATE else []
    for prompt, answer in _exchanges(rng, task):
        messages += [_msg("user", prompt), _msg("assistant", answer)]
    return messages


def prompt_key(messages: list[dict]) -> str:
    """Hash of a conversation with case and spacing folded, so near-identical prompts count as equal."""
    folded = [[m["role"], " ".join(m["content"].casefold().split())] for m in messages]
    return hashlib.sha256(json.dumps(folded).encode("utf-8")).hexdigest()


def balanced_tasks(rng: random.Random, n: int) -> list[str]:
    """``n`` family names, each family within one of the others' count, in shuffled order."""
    names = list(TASKS) * (n // len(TASKS) + 1)
    chosen = names[:n]
    rng.shuffle(chosen)
    return chosen


def build_train(rng: random.Random, n: int) -> list[dict]:
    return [{"messages": make_conversation(rng, task), "task": task} for task in balanced_tasks(rng, n)]


def build_test(rng: random.Random, n: int, train: list[dict]) -> list[dict]:
    """Held-out items: no test question (the last user turn, folded) is a train or another test question.

    Stricter than distinct conversations: a question seen in training with another system prompt or
    first turn would otherwise count as new.
    """
    seen = {prompt_key(row["messages"][-2:-1]) for row in train}
    rows = []
    for task in balanced_tasks(rng, n):
        for _ in range(MAX_DRAWS_PER_TEST_ITEM):
            messages = make_conversation(rng, task)
            key = prompt_key(messages[-2:-1])
            if key not in seen:
                break
        else:
            raise UserError(f"could not draw {n} held-out '{task}' test items distinct from train; "
                            "lower --num_test or --num_train")
        seen.add(key)
        rows.append({"messages": messages[:-1], "reference": messages[-1]["content"], "task": task})
    return rows


# ---------------------------------------------------------------- corpus from the stdlib
# A fixed, sorted list rather than sys.stdlib_module_names: importing must have no side effects
# (no this/antigravity/tkinter/turtle/idlelib, nothing that touches the terminal or warns when imported).
CORPUS_MODULES = tuple("""
abc argparse array ast asyncio asyncio.base_events asyncio.events asyncio.exceptions asyncio.futures
asyncio.locks asyncio.queues asyncio.runners asyncio.streams asyncio.subprocess asyncio.tasks
asyncio.timeouts base64 bdb binascii bisect builtins bz2 calendar cmath cmd codecs codeop collections
collections.abc colorsys compileall concurrent.futures concurrent.futures.process
concurrent.futures.thread configparser contextlib contextvars copy copyreg csv ctypes ctypes.util
dataclasses datetime dbm decimal difflib dis email email.charset email.contentmanager email.feedparser
email.generator email.header email.headerregistry email.message email.mime.multipart email.mime.text
email.parser email.policy email.utils enum errno filecmp fileinput fnmatch fractions ftplib functools gc
getopt getpass gettext glob graphlib gzip hashlib heapq hmac html html.entities html.parser http
http.client http.cookiejar http.cookies http.server imaplib importlib importlib.abc importlib.machinery
importlib.metadata importlib.resources importlib.util inspect io ipaddress itertools json json.decoder
json.encoder json.tool keyword linecache locale logging logging.config logging.handlers lzma mailbox
marshal math mimetypes mmap modulefinder multiprocessing multiprocessing.connection
multiprocessing.context multiprocessing.managers multiprocessing.pool multiprocessing.queues
multiprocessing.shared_memory multiprocessing.synchronize netrc numbers opcode operator optparse os
os.path pathlib pickle pickletools pkgutil platform plistlib poplib pprint profile pstats py_compile
pyclbr queue quopri random re reprlib runpy sched secrets select selectors shelve shlex shutil signal
smtplib socket socketserver sqlite3 sqlite3.dbapi2 ssl stat statistics string stringprep struct
subprocess symtable sys sysconfig tabnanny tarfile tempfile textwrap threading time timeit token
tokenize tomllib trace traceback tracemalloc types typing unicodedata unittest unittest.async_case
unittest.case unittest.loader unittest.mock unittest.result unittest.runner unittest.suite urllib
urllib.error urllib.parse urllib.request urllib.response urllib.robotparser uuid warnings wave weakref
wsgiref.handlers wsgiref.headers wsgiref.simple_server wsgiref.util wsgiref.validate xml xml.dom
xml.dom.minidom xml.dom.pulldom xml.etree.ElementTree xml.parsers.expat xml.sax xml.sax.handler
xml.sax.saxutils xml.sax.xmlreader xmlrpc.client xmlrpc.server zipapp zipfile zipimport zlib zoneinfo
""".split())


def clean_text(text: str) -> str:
    """Trailing spaces and surrounding blank lines dropped, one final newline: stable bytes."""
    lines = [line.rstrip() for line in text.replace("\r\n", "\n").split("\n")]
    return "\n".join(lines).strip("\n") + "\n"


def pydoc_documents() -> list[tuple[str, str]]:
    """(topic, text) for every language-reference topic that pydoc ships."""
    from pydoc_data.topics import topics

    return [(name, clean_text(topics[name])) for name in sorted(topics) if topics[name].strip()]


def _own_doc(obj) -> str:
    doc = getattr(obj, "__doc__", None)
    return inspect.cleandoc(doc) if isinstance(doc, str) and doc.strip() else ""


def _defined_in(obj, module_name: str) -> bool:
    # C accelerators (_heapq for heapq, _io for io) document the public names too.
    owner = getattr(obj, "__module__", None)
    return owner in (module_name, "_" + module_name.rsplit(".", 1)[-1])


def _section(title: str, obj) -> list[str]:
    doc = _own_doc(obj)
    return [f"{title}\n{doc}"] if doc else []


def _member_sections(module, name: str) -> list[str]:
    sections = []
    for attr in dir(module):
        obj = getattr(module, attr, None)
        if attr.startswith("_") or not (inspect.isclass(obj) or inspect.isroutine(obj)):
            continue
        if not _defined_in(obj, name):
            continue
        sections += _section(f"{name}.{attr}", obj)
        if inspect.isclass(obj):
            for key, value in sorted(vars(obj).items()):
                if not key.startswith("_") and inspect.isroutine(value):
                    sections += _section(f"{name}.{attr}.{key}", value)
    return sections


def module_document(name: str) -> str:
    """The module docstring, then the docstrings of its public classes, methods and functions."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. typing.io warns when merely looked at
        try:
            module = importlib.import_module(name)
        except Exception:  # noqa: BLE001 - a module this build lacks (no _ssl, no _sqlite3) is skipped
            return ""
        sections = _section(name, module) + _member_sections(module, name)
    return clean_text("\n\n".join(sections)) if sections else ""


def docstring_documents() -> list[tuple[str, str]]:
    docs = [(name, module_document(name)) for name in CORPUS_MODULES]
    return [(name, text) for name, text in docs if text]


def corpus_documents() -> dict[str, list[tuple[str, str]]]:
    """{"pydoc": [...], "docstrings": [...]}, read in a fresh isolated interpreter.

    Not in this process: a host such as pytest replaces hooks like ``sys.unraisablehook`` (so the
    docstrings would differ), and importing ~200 modules here would be a side effect of its own.
    """
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); import utils.demo.build as d; "
            "print(json.dumps({'pydoc': d.pydoc_documents(), 'docstrings': d.docstring_documents()}))")
    done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(f"reading the stdlib docs failed:\n{done.stderr}")
    return {group: [(name, text) for name, text in docs] for group, docs in json.loads(done.stdout).items()}


# ---------------------------------------------------------------- transcripts
# Hand-written, so every awkward case is there on purpose. Markers count only at the start of a line
# outside fenced code; a heading marker (``## Human``) is the whole line.
FENCE = "```"
TRANSCRIPTS = {
    "01_front_matter_bold.md": f"""---
title: Reading files in Python
tags: [python, io]
---

**User**: How do I read a text file line by line?

**Assistant**: Open it in a `with` block and loop over the file object:

{FENCE}python
with open("notes.txt", encoding="utf-8") as f:
    for line in f:
        print(line.rstrip())
{FENCE}

The file is closed when the block ends, even if an exception is raised.

**User**: What does `rstrip()` remove there?

**Assistant**: Trailing whitespace, including the newline at the end of each line.
""",
    "02_code_fences.md": f"""# A chat about showing chats

**User**: How can I put a chat log in a docstring without it being read as a chat?

**Assistant**: Put it in a fenced block, so the markers are only text:

{FENCE}markdown
**User**: fake
**Assistant**: this line is part of the example, not a new message
{FENCE}

**Assistant**: A tilde fence works the same way:

~~~
**User**: also fake
~~~

**User**: And what does `f"{{name!r}}"` do?

**Assistant**: It calls `repr()` on the value before formatting it, so strings keep their quotes.
""",
    "03_system_and_lists.md": """**System**: You answer questions about the Python standard library in one or two sentences.

**User**: Which of these are keywords?

- **Assistant**: is a word in this list, not a keyword
- `lambda`
- `print`

**Assistant**: Only `lambda` is a keyword. `print` is a built-in function, and the first item is plain text.

* **User**: this star item is also just a list entry
1. **User**: and so is this numbered one

**User**: How do I check that in code?

**Assistant**: Call `keyword.iskeyword("lambda")`; it returns `True`.
""",
    "04_headings.md": f"""---
title: Dictionaries
author: demo
---

# Dictionaries

## Human

How do I get a value with a default?

## AI

Use `d.get(key, default)`. It returns `default` when the key is missing and never raises `KeyError`.

{FENCE}text
## Human
This heading is inside a code block, so it is not a new turn.
{FENCE}

## Human

And to store the default at the same time?

## AI

## Human-readable output

`d.setdefault(key, default)` returns the value and stores `default` if the key was missing.
Print the result with `pprint.pprint(d)` to read it easily.
""",
    "05_named_speakers.md": """**Alice**: I have a list of numbers.

**Alice**: How do I sort it from largest to smallest?

**Mnemosyne**: Call `sorted(numbers, reverse=True)` for a new list, or `numbers.sort(reverse=True)` to sort it in place.

**Alice**: What does `sorted` do with strings?

**Mnemosyne**: It compares code points, so `"B"` sorts before `"a"`. Pass `key=str.lower` to ignore case.

- **Alice**: appears here as a list item, so it stays inside this message.
""",
    "06_nested_fences.md": f"""---
title: Writing a transcript to a file
---

**Alice**: How would I write a chat like this one to a Markdown file?

**Mnemosyne**: Join the turns with blank lines. Here is some output, in a four-backtick fence because it holds a three-backtick one:

`{FENCE}markdown
**Alice**: hello
{FENCE}python
print("**Mnemosyne**: not a turn either")
{FENCE}
**Mnemosyne**: hi
`{FENCE}

Nothing inside that block starts a new turn.

**Alice**: Is `**Alice**:` special anywhere else in a line?

**Mnemosyne**: Only at the start of a line. In the middle of a sentence, as here, **Mnemosyne**: is plain text.
""",
    "07_plain_notes.md": """---
title: Reading list
---

# Reading list for the standard library

- `pathlib` for paths instead of string handling with `os.path`.
- The recipes at the end of the `itertools` page.
- `textwrap.dedent` for multi-line strings in tests.

These are notes, not a conversation: no user or assistant speaks here.
""",
}

_BOLD = {"user": ["**User**:"], "assistant": ["**Assistant**:"], "system": []}
_NAMED = {"user": ["**Alice**:"], "assistant": ["**Mnemosyne**:"], "system": []}
PARTICIPANTS = {
    "01_front_matter_bold.md": {"roles": _BOLD, "blocks": ["user", "assistant", "user", "assistant"],
                                "features": ["front_matter", "code_fence"]},
    "02_code_fences.md": {"roles": _BOLD, "blocks": ["user", "assistant", "assistant", "user", "assistant"],
                          "features": ["preamble_heading", "fenced_marker_lookalikes", "tilde_fence",
                                       "consecutive_same_speaker"]},
    "03_system_and_lists.md": {"roles": {**_BOLD, "system": ["**System**:"]},
                               "blocks": ["system", "user", "assistant", "user", "assistant"],
                               "features": ["system_message", "list_item_marker_lookalikes"]},
    "04_headings.md": {"roles": {"user": ["## Human"], "assistant": ["## AI"], "system": []},
                       "blocks": ["user", "assistant", "user", "assistant"],
                       "features": ["front_matter", "preamble_heading", "heading_markers",
                                    "fenced_marker_lookalikes", "heading_prefix_lookalike"]},
    "05_named_speakers.md": {"roles": _NAMED, "blocks": ["user", "user", "assistant", "user", "assistant"],
                             "features": ["consecutive_same_speaker", "list_item_marker_lookalikes"]},
    "06_nested_fences.md": {"roles": _NAMED, "blocks": ["user", "assistant", "user", "assistant"],
                            "features": ["front_matter", "nested_fences", "fenced_marker_lookalikes",
                                         "inline_marker_lookalikes"]},
    "07_plain_notes.md": {"roles": {"user": [], "assistant": [], "system": []}, "blocks": [],
                          "features": ["front_matter", "no_conversation"]},
}


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


def _write_corpus(root: Path) -> dict:
    counts = {}
    groups = {**corpus_documents(), "stories": story_documents(WORDS, NAMES, CITIES, COLORS)}
    for group, docs in groups.items():
        size = sum(_write(root / "corpus" / group / f"{name}.txt", text) for name, text in docs)
        counts[group] = {"documents": len(docs), "bytes": size}
    return counts


def _write_transcripts(root: Path) -> dict:
    for name, text in TRANSCRIPTS.items():
        _write(root / "transcripts" / name, text)
    _write(root / "transcripts" / "PARTICIPANTS.json",
           json.dumps(PARTICIPANTS, indent=2, sort_keys=True) + "\n")
    with_conversation = sum(bool(info["blocks"]) for info in PARTICIPANTS.values())
    return {"files": len(TRANSCRIPTS), "with_conversation": with_conversation}


WORKED_PER_FILE = 1000


def worked_documents(train: list[dict]) -> list[tuple[str, str]]:
    """The train conversations as plain text (``User: ...`` / ``Assistant: ...``), for pre-training.

    Real pre-training mixes hold question-answer text; these give the tiny model the task skills
    (copying, ordering, looking up words in its context) that minutes of stories and docs do not,
    while the chat template, the end-of-turn token and answering in the assistant turn are left to
    SFT. Only train conversations appear: the held-out test questions stay unseen.
    """
    blocks = ["\n".join(f"{m['role'].title()}: {m['content']}" for m in row["messages"]) for row in train]
    return [(f"worked_{i // WORKED_PER_FILE:03d}", "\n\n".join(blocks[i:i + WORKED_PER_FILE]) + "\n")
            for i in range(0, len(blocks), WORKED_PER_FILE)]


def _write_instruct(root: Path, seed: int, num_train: int, num_test: int) -> dict:
    # One stream per split: the test items do not move when only --num_train changes (bar dedupe).
    train = build_train(random.Random(f"{seed}/train"), num_train)
    test = build_test(random.Random(f"{seed}/test"), num_test, train)
    _write(root / "instruct" / "train.jsonl", _jsonl(train))
    _write(root / "instruct" / "test.jsonl", _jsonl(test))
    worked = worked_documents(train)
    for name, text in worked:
        _write(root / "instruct" / "worked" / f"{name}.txt", text)
    return {"train": _split_counts(train), "test": _split_counts(test), "worked_documents": len(worked)}


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
  that pre-training sees the vocabulary the instructions use (see utils/demo_stories.py).
- `instruct/train.jsonl` ({inst['train']['total']} conversations) and `instruct/test.jsonl`
  ({inst['test']['total']} held-out prompts with a `reference` answer) over {len(TASKS)} task families:
  {", ".join(TASKS)}. Answers are bare results, compared by exact match.
- `instruct/worked/*.txt`: the same train conversations as plain `User:`/`Assistant:` text in
  {inst['worked_documents']} files, part of the tiny model's pre-training mix (never the test questions).
- `transcripts/*.md`: {manifest['transcripts']['files']} Markdown chats for the conversation extractor;
  `PARTICIPANTS.json` gives each file's speaker markers per role and `blocks`, the role of each marker
  in order (same-speaker runs not merged). A marker counts only at the start of a line, outside front
  matter and fenced code; a heading marker (`## Human`) must be the whole line.
- `manifest.json`: these counts per family and split.
"""


def build_demo_data(root: Path, seed: int, num_train: int, num_test: int) -> dict:
    """Write every part into ``root`` (an empty directory) and return the manifest."""
    manifest = {
        "generator_version": GENERATOR_VERSION,
        "seed": seed,
        "python_version": ".".join(map(str, sys.version_info[:3])),
        "corpus": _write_corpus(root),
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
    with atomic_dir(output_dir, force=force) as tmp:
        tmp.chmod(0o755)  # mkdtemp makes it private; the published data set is meant to be readable
        return build_demo_data(tmp, seed, num_train, num_test)
