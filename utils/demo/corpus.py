"""The demo's raw-text corpus from the stdlib: the language-reference topics and module docstrings."""
from __future__ import annotations

import importlib
import inspect
import json
import subprocess
import sys
import warnings
from pathlib import Path

from utils.common.errors import UserError

ROOT = Path(__file__).resolve().parents[2]

# ---------------------------------------------------------------- corpus from the stdlib
# A fixed, sorted list rather than sys.stdlib_module_names: importing must have no side effects
# (no this/antigravity/tkinter/turtle/idlelib, nothing that touches the terminal or warns when imported).
STDLIB_READ_TIMEOUT_S = 120
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


def docstring_documents(progress=None) -> list[tuple[str, str]]:
    """(module, text) for each of CORPUS_MODULES that has docstrings; each name goes to ``progress`` (a
    stream) before it is imported, so a parent can tell where a stuck child stopped."""
    docs = []
    for name in CORPUS_MODULES:
        if progress is not None:
            progress.write(name + "\n")
            progress.flush()
        docs.append((name, module_document(name)))
    return [(name, text) for name, text in docs if text]


def corpus_documents() -> dict[str, list[tuple[str, str]]]:
    """{"pydoc": [...], "docstrings": [...]}, read in a fresh isolated interpreter.

    Not in this process: a host such as pytest replaces hooks like ``sys.unraisablehook`` (so the
    docstrings would differ), and importing ~200 modules here would be a side effect of its own.
    """
    code = (f"import json, sys; sys.path.insert(0, {str(ROOT)!r}); import utils.demo.corpus as d; "
            "print(json.dumps({'pydoc': d.pydoc_documents(), 'docstrings': d.docstring_documents(sys.stderr)}))")
    try:  # about a second on an idle machine
        done = subprocess.run([sys.executable, "-I", "-c", code], capture_output=True, text=True,
                              timeout=STDLIB_READ_TIMEOUT_S)
    except subprocess.TimeoutExpired as err:
        seen = (err.stderr or b"").decode(errors="replace").split()
        where = f"while importing {seen[-1]!r} ({len(seen)} of {len(CORPUS_MODULES)} modules)" if seen else \
            "before its first module (starting the interpreter, or the language reference)"
        raise UserError(f"reading the stdlib docs for the demo corpus: {sys.executable} -I stopped {where} for "
                        f"{STDLIB_READ_TIMEOUT_S} s; run `{sys.executable} -I -c 'import "
                        f"{seen[-1] if seen else 'pydoc_data.topics'}'` to see it hang, and report it") from None
    if done.returncode != 0:
        raise RuntimeError(f"reading the stdlib docs failed:\n{done.stderr}")
    return {group: [(name, text) for name, text in docs] for group, docs in json.loads(done.stdout).items()}
