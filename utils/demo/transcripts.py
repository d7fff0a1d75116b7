"""The demo's hand-written Markdown transcripts and the speaker markers each one uses."""
from __future__ import annotations

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
