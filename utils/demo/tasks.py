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
# Each family draws its fields and answer; the prompt is one of the family's phrasings. Training uses
# the TRAIN phrasings only; HELDOUT phrasings (new frames and new verbs for the same task) appear in
# the rephrased test set alone, so it measures following the instruction, not recalling its wording.
# Items are whole words written with spaces between them: every item is then one token, the same
# token in the prompt and in the answer, which is what lets a ~6M-parameter model learn to look
# items up in its prompt within minutes. (Bracketed, comma-separated lists of multi-digit numbers
# split items into several tokens around repeated separators; trained from random weights for 1,500
# steps, the tiny model stayed under 12% exact match on them, against ~70% on word lists.)

PHRASINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "copy_words": (
        ("Repeat the words: {W}", "Copy exactly: {W}", "Say these words again: {W}", "Please repeat: {W}",
         "Repeat these words, please. {W}", "{W}\nRepeat the words above.", "Copy the words: {W}"),
        ("Could you echo these words back? {W}", "I need the same words written again: {W}",
         "Task: copy the list. Words: {W}"),
    ),
    "reverse_words": (
        ("Reverse the words: {W}", "Write these words in reverse order: {W}", "Say the words backwards: {W}",
         "Please reverse: {W}", "Reverse these words, please. {W}", "{W}\nReverse the words above.",
         "Put the words in reverse order: {W}"),
        ("Could you flip the order of these words? {W}", "I need the words from last to first: {W}",
         "Task: reverse the list. Words: {W}"),
    ),
    "sort_words": (
        ("Sort the words: {W}", "Put these words in alphabetical order: {W}",
         "Write the words sorted from A to Z: {W}", "Please sort: {W}", "Sort these words, please. {W}",
         "{W}\nSort the words above.", "Alphabetize: {W}"),
        ("Could you order these words alphabetically? {W}", "I need the words in dictionary order: {W}",
         "Task: sort the list. Words: {W}"),
    ),
    "count_words": (
        ("How many words are in: {W}?", "Count the words: {W}", "How many words do you see? {W}",
         "Please count: {W}", "Count these words, please. {W}", "{W}\nHow many words are above?",
         "Number of words in: {W}?"),
        ("Could you tell me how many words there are? {W}", "I need the word count of: {W}",
         "Task: count the list. Words: {W}"),
    ),
    "first_word": (
        ("What is the first word in: {W}?", "Give the first word: {W}", "Which word comes first? {W}",
         "Please give the first word: {W}", "First word of: {W}?", "{W}\nWhat is the first word above?",
         "Name the first word: {W}"),
        ("Could you tell me which word starts this list? {W}", "I need the opening word of: {W}",
         "Task: first word of the list. Words: {W}"),
    ),
    "last_word": (
        ("What is the last word in: {W}?", "Give the last word: {W}", "Which word comes last? {W}",
         "Please give the last word: {W}", "Last word of: {W}?", "{W}\nWhat is the last word above?",
         "Name the last word: {W}"),
        ("Could you tell me which word ends this list? {W}", "I need the final word of: {W}",
         "Task: last word of the list. Words: {W}"),
    ),
    "next_word": (
        ("Which word comes after {x} in: {W}?", "In {W}, what follows {x}?", "Give the word after {x}: {W}",
         "Please give the word after {x}: {W}", "{W}\nWhich word comes after {x}?",
         "What word follows {x} in: {W}?", "Next word after {x}: {W}"),
        ("Could you tell me the word right after {x}? {W}", "I need the word that comes next after {x}: {W}",
         "Task: word after {x}. Words: {W}"),
    ),
    "membership": (
        ("Is {x} in: {W}? Answer yes or no.", "Does the list {W} contain {x}?", "Is {x} one of these words? {W}",
         "Please check if {x} is in: {W}", "{W}\nIs {x} in the words above?", "Is there {x} in: {W}?",
         "Yes or no: is {x} in {W}?"),
        ("Could you check whether {x} appears? {W}", "I need to know if {x} is listed: {W}",
         "Task: is {x} in the list? Words: {W}"),
    ),
    "uppercase": (
        ("Convert to uppercase: {t}", "Write in capital letters: {t}", "Uppercase this: {t}",
         "Please uppercase: {t}", "{t}\nWrite the words above in capital letters.", "Make it uppercase: {t}",
         "Capitalize every letter: {t}"),
        ("Could you write these in upper case? {t}", "I need this in all caps: {t}",
         "Task: uppercase the text. Text: {t}"),
    ),
    "lowercase": (
        ("Convert to lowercase: {t}", "Write in small letters: {t}", "Lowercase this: {t}",
         "Please lowercase: {t}", "{t}\nWrite the words above in small letters.", "Make it lowercase: {t}",
         "Use only small letters: {t}"),
        ("Could you write these in lower case? {t}", "I need this without capitals: {t}",
         "Task: lowercase the text. Text: {t}"),
    ),
    "extract_field": (
        ("{r} What is the {f}?", "Read this: {r} What is the {f}?", "{r} Give the {f}.",
         "Record: {r} Which {f} does it hold?", "{r}\nPlease give the {f}.", "What is the {f} in: {r}",
         "{r} Name the {f}."),
        ("Could you look up the {f}? {r}", "I need the {f} from this record: {r}",
         "Task: find the {f}. Record: {r}"),
    ),
    "make_record": (
        ("Write as a record: {p}", "Format as field: value pairs: {p}", "Make a record from: {p}",
         "Please make a record: {p}", "{p}\nWrite the above as a record.", "Turn into a record: {p}",
         "Record these fields: {p}"),
        ("Could you format this as a record? {p}", "I need these fields as a record: {p}",
         "Task: build a record. Fields: {p}"),
    ),
}


def random_words(rng: random.Random, lo: int = 3, hi: int = 6) -> list[str]:
    """Distinct words, so that 'which comes after' and membership 'no' probes are well defined."""
    return rng.sample(WORDS, rng.randint(lo, hi))


def gen_copy_words(rng: random.Random, words: list[str] | None = None) -> tuple[dict, str]:
    words = words or random_words(rng)
    return {"W": " ".join(words)}, " ".join(words)


def gen_reverse_words(rng: random.Random, words: list[str] | None = None) -> tuple[dict, str]:
    words = words or random_words(rng)
    return {"W": " ".join(words)}, " ".join(words[::-1])


def gen_sort_words(rng: random.Random, words: list[str] | None = None) -> tuple[dict, str]:
    words = words or random_words(rng)
    return {"W": " ".join(words)}, " ".join(sorted(words))


def gen_count_words(rng: random.Random, words: list[str] | None = None) -> tuple[dict, str]:
    words = words or random_words(rng, 1, 8)
    return {"W": " ".join(words)}, str(len(words))


def gen_first_word(rng: random.Random, words: list[str] | None = None) -> tuple[dict, str]:
    words = words or random_words(rng)
    return {"W": " ".join(words)}, words[0]


def gen_last_word(rng: random.Random, words: list[str] | None = None) -> tuple[dict, str]:
    words = words or random_words(rng)
    return {"W": " ".join(words)}, words[-1]


def gen_next_word(rng: random.Random, words: list[str] | None = None) -> tuple[dict, str]:
    words = words or random_words(rng)
    i = rng.randrange(len(words) - 1)
    return {"x": words[i], "W": " ".join(words)}, words[i + 1]


def gen_membership(rng: random.Random, words: list[str] | None = None) -> tuple[dict, str]:
    words = words or random_words(rng)
    present = rng.random() < 0.5
    probe = rng.choice(words if present else [w for w in WORDS if w not in words])
    return {"x": probe, "W": " ".join(words)}, "yes" if present else "no"


def gen_uppercase(rng: random.Random, words: list[str] | None = None) -> tuple[dict, str]:
    text = " ".join(words or random_words(rng, 1, 4))
    return {"t": text}, text.upper()


def gen_lowercase(rng: random.Random, words: list[str] | None = None) -> tuple[dict, str]:
    text = " ".join(words or random_words(rng, 1, 4))
    return {"t": text.upper()}, text


FIELD_POOLS = {"name": NAMES, "city": CITIES, "color": COLORS}


def _random_record(rng: random.Random) -> dict[str, str]:
    """Two or three fields, each with a one-token value."""
    fields = rng.sample(sorted(FIELD_POOLS), rng.randint(2, 3))
    return {f: rng.choice(FIELD_POOLS[f]) for f in fields}


def _record_text(record: dict[str, str]) -> str:
    return " ".join(f"{f.title()}: {v}." for f, v in record.items())


def gen_extract_field(rng: random.Random) -> tuple[dict, str]:
    record = _random_record(rng)
    asked = rng.choice(list(record))
    return {"r": _record_text(record), "f": asked}, record[asked]


def gen_make_record(rng: random.Random) -> tuple[dict, str]:
    record = _random_record(rng)
    return {"p": " ".join(f"{f} {v}" for f, v in record.items())}, _record_text(record)


TASKS: dict[str, Callable[..., tuple[dict, str]]] = {
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


def ask(rng: random.Random, task: str, heldout: bool = False, words: list[str] | None = None) -> tuple[str, str]:
    """(prompt, answer) of one ``task`` question, in a train phrasing or a held-out one."""
    fields, answer = TASKS[task](rng, words) if words else TASKS[task](rng)
    return rng.choice(PHRASINGS[task][heldout]).format(**fields), answer


def _exchanges(rng: random.Random, task: str, heldout: bool) -> list[tuple[str, str]]:
    """One (prompt, answer) pair, or two where the last one is ``task`` (only it uses ``heldout``)."""
    if rng.random() >= MULTI_TURN_RATE:
        return [ask(rng, task, heldout)]
    if task in LIST_TASKS and rng.random() < 0.5:
        words = random_words(rng)
        first = rng.choice([t for t in LIST_TASKS if t != task])
        return [ask(rng, first, False, words), ask(rng, task, heldout, words)]
    return [ask(rng, rng.choice(tuple(TASKS))), ask(rng, task, heldout)]


def make_conversation(rng: random.Random, task: str, heldout: bool = False) -> list[dict]:
    """Messages ending with the assistant's answer to a ``task`` question."""
    messages = [_msg("system", rng.choice(SYSTEM_PROMPTS))] if rng.random() < SYSTEM_RATE else []
    for prompt, answer in _exchanges(rng, task, heldout):
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


def build_test(rng: random.Random, n: int, train: list[dict], heldout: bool = False,
               seen: set[str] | None = None) -> list[dict]:
    """Held-out items: no test question (the last user turn, folded) is a train or another test question.

    Stricter than distinct conversations: a question seen in training with another system prompt or
    first turn would otherwise count as new. ``heldout`` asks the last question in a phrasing that
    training never uses.
    """
    seen = seen if seen is not None else {prompt_key(row["messages"][-2:-1]) for row in train}
    rows = []
    for task in balanced_tasks(rng, n):
        for _ in range(MAX_DRAWS_PER_TEST_ITEM):
            messages = make_conversation(rng, task, heldout)
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
