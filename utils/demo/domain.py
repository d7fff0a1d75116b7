"""Domain conversations for the CPT -> IFT demo: questions about the language reference, answered from it.

The CPT domain corpus is ``corpus/pydoc`` (the language-reference topics). Instruction tuning after CPT
needs conversations about that same domain, so each section of each topic becomes a question ("What
does the Python language reference say about <section>?") whose answer is the section's opening
paragraph, word for word: the model is asked to say what the corpus says.
"""
from __future__ import annotations

import random
import re

QUESTIONS = (
    "What does the Python language reference say about {h}?",
    "Explain {h} in Python.",
    "Summarise the Python reference section on {h}.",
    "In Python, what are {h}?",
)
MIN_ANSWER, MAX_ANSWER = 60, 600
"""Characters of a usable opening paragraph: long enough to say something, short enough to learn."""
_UNDERLINE = re.compile(r"^([=*\-~^\"])\1{2,}$")


def sections(text: str) -> list[tuple[str, str]]:
    """(heading, opening paragraph) of each underlined section of one topic."""
    lines = text.splitlines()
    out = []
    for i in range(len(lines) - 1):
        heading, rule = lines[i].strip(), lines[i + 1].strip()
        if not heading or not _UNDERLINE.match(rule) or len(rule) < len(heading) // 2:
            continue
        paragraph: list[str] = []
        for line in lines[i + 2:]:
            if not line.strip():
                if paragraph:
                    break
                continue
            if _UNDERLINE.match(line.strip()):  # the next heading
                break
            if line.startswith(" "):  # a grammar or code block: skipped before the paragraph, ends it after
                if paragraph:
                    break
                continue
            paragraph.append(line.strip())
        answer = " ".join(" ".join(paragraph).split())
        if MIN_ANSWER <= len(answer) <= MAX_ANSWER:
            out.append((heading, answer))
    return out


def domain_conversations(pydoc_docs: list[tuple[str, str]], seed: int) -> list[dict]:
    """One question per section of every topic, phrasings drawn with ``seed``, in topic order."""
    rng = random.Random(f"{seed}/domain")
    rows = []
    for topic, text in pydoc_docs:
        for heading, answer in sections(text):
            question = rng.choice(QUESTIONS).format(h=heading[0].lower() + heading[1:])
            rows.append({"messages": [{"role": "user", "content": question},
                                      {"role": "assistant", "content": answer}], "task": f"domain:{topic}"})
    return rows
