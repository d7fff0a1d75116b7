"""The demo's instruction data: twelve word-task families with exactly checkable answers, and the
train/test splits built from them (held-out questions never seen in training)."""
from __future__ import annotations

import hashlib
import json
import random
from typing import Callable

from utils.common.errors import UserError

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
