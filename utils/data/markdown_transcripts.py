"""Turns out of markdown chat exports, found by configurable speaker markers (no name is built in).

Rules, chosen to match how chat exporters write markdown:

* A speaker marker counts only at the start of a line, after at most 3 spaces (CommonMark: 4 spaces or a
  tab make an indented code block, so that is content). Text after the marker on the same line starts
  the message.
* Plain-string markers match literally; when one ends in a letter or digit the next character must not
  be one, so ``# Me`` does not fire on ``# Mechanics``. Regex markers are used as written, anchored at
  the line start. ``case_sensitive: false`` applies to both. When several markers match, the longest
  match wins (then the order user, assistant, system, ignore).
* Never a speaker change: lines inside fenced code blocks (``` or ~~~, 3 or more, closed by the same
  character at least as long; a fence never closed makes the file a Skip, ``unclosed_code_fence``, naming
  the line it opens, since the rest of the file would otherwise become one message), and list items (``-``, ``*``, ``+``, ``1.``, ``1)`` followed by a space),
  so an answer's own ``- **User**: ...`` bullet or a ``# comment`` in code stays content.
* YAML front matter (``---`` ... ``---``/``...`` at the very top) and any preamble before the first marker
  (titles, dates) are dropped. Blocks started by an ``ignore`` marker are dropped (tool output).
* ``ignore_lines`` regexes drop whole lines outside code fences (``Date: ...`` stamps, anchors).
  Trailing horizontal rules (``---``, ``***``, ``___``) of a message are export separators and dropped;
  each message is stripped of surrounding whitespace. Merging consecutive same-speaker blocks is done by
  utils.data.conversations, as for every layout.

Regex safety: a pattern with a repeated group that itself repeats (``(a+)+``, ``(\\w+\\s?)*``), or a
repeated alternation whose branches can start alike (``(a|a)*``, ``(ab|a)+``), can take exponential time;
more than MAX_LONG_REPEATS open-ended repetitions (``.*.*.*.*``) take polynomial time of that degree.
All are refused as config errors, as is a pattern that matches an empty line. Markers only ever see the
first MAX_SCAN characters of a line, which bounds the cost of the patterns allowed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Iterable

from utils.common.errors import UserError
from utils.data.sources import RowProblem

try:  # the regex parser is private; it moved in Python 3.11
    from re import _parser as _sre_parse
except ImportError:  # pragma: no cover - Python < 3.11
    import sre_parse as _sre_parse  # type: ignore[no-redef]

MAX_SCAN = 256
"""Characters of a line that marker and ignore_lines patterns see."""
MAX_LONG_REPEATS = 3
"""Repetitions that may run over more than 16 characters, per pattern: 4 of ``.*`` cost ~1 s per line."""
MARKER_ROLES = ("user", "assistant", "system", "ignore")
_LIST_ITEM = re.compile(r"(?:[-*+]|\d{1,9}[.)])(?:\s|$)")
_FENCE = re.compile(r"\s*(`{3,}|~{3,})(.*)")
_RULE = re.compile(r"\s{0,3}(?:-{3,}|\*{3,}|_{3,})\s*")
_REPEATS = {_sre_parse.MAX_REPEAT, _sre_parse.MIN_REPEAT} | (
    {_sre_parse.POSSESSIVE_REPEAT} if hasattr(_sre_parse, "POSSESSIVE_REPEAT") else set())


@dataclass(frozen=True)
class Speakers:
    """Compiled speaker markers and line filters of one dataset entry."""

    markers: tuple[tuple[str, re.Pattern], ...]
    ignore_lines: tuple[re.Pattern, ...] = ()

    def match(self, line: str) -> tuple[str, str] | None:
        """(role, rest of the line) when ``line`` opens a turn, else None."""
        body = line.lstrip(" ")
        if len(line) - len(body) > 3 or body.startswith("\t") or _LIST_ITEM.match(body):
            return None
        scan = body[:MAX_SCAN]
        best: tuple[int, str] | None = None
        for role, pattern in self.markers:
            found = pattern.match(scan)
            if found and found.end() > 0 and (best is None or found.end() > best[0]):
                best = (found.end(), role)
        return None if best is None else (best[1], body[best[0]:])

    def dropped(self, line: str) -> bool:
        """Whether a line outside code is metadata to leave out (``ignore_lines``)."""
        text = line.strip()
        return len(text) <= MAX_SCAN and any(p.fullmatch(text) for p in self.ignore_lines)


def compile_speakers(participants: dict[str, list[str]], *, use_regex: bool, case_sensitive: bool,
                     ignore_lines: Iterable[str] = (), where: str = "markdown_transcripts") -> Speakers:
    """Check and compile markers; a bad or risky pattern is a UserError naming it, its role and ``where``."""
    flags = 0 if case_sensitive else re.IGNORECASE
    markers = []
    for role in MARKER_ROLES:
        for marker in participants.get(role) or []:
            source = marker if use_regex else _literal(marker)
            markers.append((role, _compile(source, flags, f"{where}: participants.{role}: {marker!r}")))
    drops = tuple(_compile(p, flags, f"{where}: ignore_lines: {p!r}") for p in ignore_lines)
    return Speakers(tuple(markers), drops)


def _literal(marker: str) -> str:
    if not marker.strip():
        return ""  # refused below as matching an empty line
    return re.escape(marker) + (r"(?!\w)" if marker[-1].isalnum() else "")


def _compile(source: str, flags: int, what: str) -> re.Pattern:
    try:
        pattern = re.compile(source, flags)
    except re.error as err:
        raise UserError(f"{what}: invalid regex ({err}); fix it, or set use_regex to false "
                        "for plain-text markers") from None
    if pattern.match(""):
        raise UserError(f"{what}: matches an empty line, so every line would start a turn; "
                        "make it require some text")
    parsed = _sre_parse.parse(source, flags)
    if _nested_repeat(parsed):
        raise UserError(f"{what}: a repeated group that itself repeats (like (a+)+) can hang on long "
                        "lines; rewrite it without the nested repetition")
    if _ambiguous_alternation(parsed, bool(flags & re.IGNORECASE)):
        raise UserError(f"{what}: a repeated alternation whose branches can start alike (like (a|ab)*) "
                        "can hang on long lines; make the branches start with different characters")
    if (count := _long_repeats(parsed)) > MAX_LONG_REPEATS:
        raise UserError(f"{what}: {count} open-ended repetitions (like .*) can take seconds per line; "
                        f"use at most {MAX_LONG_REPEATS}, or bound them (like .{{0,16}})")
    return pattern


def _nested_repeat(parsed, inside_repeat: bool = False) -> bool:
    """True when a repetition of more than one item contains another such repetition."""
    for op, arg in parsed:
        if op in _REPEATS:
            low, high, sub = arg
            many = high is _sre_parse.MAXREPEAT or high > 1
            if many and inside_repeat:
                return True
            if _nested_repeat(sub, inside_repeat or many):
                return True
        else:
            for sub in _subpatterns(op, arg):
                if _nested_repeat(sub, inside_repeat):
                    return True
    return False


def _ambiguous_alternation(parsed, ignore_case: bool, inside_repeat: bool = False) -> bool:
    """True when a repetition holds an alternation whose branches can match at the same place."""
    for op, arg in parsed:
        if op in _REPEATS:
            low, high, sub = arg
            if _ambiguous_alternation(sub, ignore_case, inside_repeat or (high > 1 and high != low)):
                return True
        elif op is _sre_parse.BRANCH and inside_repeat and not _distinct_starts(arg[1], ignore_case):
            return True
        elif any(_ambiguous_alternation(sub, ignore_case, inside_repeat) for sub in _subpatterns(op, arg)):
            return True
    return False


def _distinct_starts(alternatives, ignore_case: bool) -> bool:
    """Every branch starts with a known set of characters (a literal, a small class), disjoint from the others."""
    seen: set[str] = set()
    for alt in alternatives:
        first = _first_chars(alt[0]) if alt else None
        if first is None:
            return False
        first = {c.casefold() for c in first} if ignore_case else first
        if seen & first:
            return False
        seen |= first
    return True


def _first_chars(item) -> set[str] | None:
    """The characters a LITERAL or a small ``[...]`` of literals and ranges matches; None otherwise."""
    op, arg = item
    if op is _sre_parse.LITERAL:
        return {chr(arg)}
    if op is not _sre_parse.IN:
        return None
    chars: set[str] = set()
    for kind, value in arg:
        if kind is _sre_parse.LITERAL:
            chars.add(chr(value))
        elif kind is _sre_parse.RANGE and value[1] - value[0] < 256:
            chars.update(map(chr, range(value[0], value[1] + 1)))
        else:  # a negated class, \w and other categories: not worth proving disjoint
            return None
    return chars


def _long_repeats(parsed) -> int:
    """Repetitions whose count can vary by more than 16 (``*``, ``+``, ``{0,100}``), nested ones included."""
    count = 0
    for op, arg in parsed:
        if op in _REPEATS:
            low, high, sub = arg
            count += (min(high, MAX_SCAN) - low > 16) + _long_repeats(sub)
        else:
            count += sum(_long_repeats(sub) for sub in _subpatterns(op, arg))
    return count


def _subpatterns(op, arg) -> list:
    if op is _sre_parse.SUBPATTERN:
        return [arg[-1]]
    if op is _sre_parse.BRANCH:
        return list(arg[1])
    if op in (_sre_parse.ASSERT, _sre_parse.ASSERT_NOT):
        return [arg[1]]
    if getattr(_sre_parse, "ATOMIC_GROUP", None) is op:
        return [arg]
    if op is _sre_parse.GROUPREF_EXISTS:
        return [p for p in arg[1:] if p is not None]
    return []


def markdown_turns(row: dict, speakers: Speakers) -> list[dict]:
    """A markdown export file; a file with no marker, or markers of one role only, is a Skip."""
    turns = split_turns(row["text"], speakers)
    roles = {t["role"] for t in turns} - {"system"}
    if not roles:
        raise RowProblem("no_conversation_found", "no speaker marker at the start of any line")
    if len(roles) == 1:
        raise RowProblem("single_role", f"only '{roles.pop()}' turns found; check the participants markers")
    return turns


def split_turns(text: str, speakers: Speakers) -> list[dict]:
    """``[{"role", "content"}, ...]`` in file order; ignored blocks and empty messages left out.

    A code fence still open at the end of the file raises RowProblem ``unclosed_code_fence`` naming its line.
    """
    turns: list[dict] = []
    role: str | None = None
    block: list[str] = []
    fence: str | None = None
    lines, first = _body_lines(text)
    for number, line in enumerate(lines, first):
        if fence is not None:
            fence = None if _closes(line, fence) else fence
        elif (opened := _FENCE.fullmatch(line)) and not (opened[1][0] == "`" and "`" in opened[2]):
            fence, fence_line = opened[1], number
        elif hit := speakers.match(line):
            _flush(turns, role, block)
            role, block = hit[0], [hit[1]]
            continue
        elif speakers.dropped(line):
            continue
        block.append(line)
    if fence is not None:
        raise RowProblem("unclosed_code_fence", f"line {fence_line}: the code fence {fence} opened here is never "
                         "closed, so every later line, other speakers' included, would be one message; close it")
    _flush(turns, role, block)
    return turns


def _body_lines(text: str) -> tuple[list[str], int]:
    """Lines without front matter, and the file's line number of the first; CRLF and stray CR (CR CR LF in
    some exports) normalised."""
    lines = [line.rstrip("\r") for line in text.split("\n")]
    if lines and lines[0].strip() == "---":
        for end in range(1, len(lines)):
            if lines[end].strip() in ("---", "..."):
                return lines[end + 1:], end + 2
    return lines, 1


def _closes(line: str, fence: str) -> bool:
    body = line.strip()
    return len(body) >= len(fence) and body == fence[0] * len(body)


def _flush(turns: list[dict], role: str | None, block: list[str]) -> None:
    if role is None or role == "ignore":
        return  # preamble before the first marker, or a dropped block
    while block and (not block[-1].strip() or _RULE.fullmatch(block[-1])):
        block.pop()
    content = "\n".join(block).strip()
    if content:
        turns.append({"role": role, "content": content})
