"""Generated short stories: the plain-English part of the demo pre-training corpus.

The stdlib docs hardly use the everyday words the demo instructions are about (``apple``, ``owl``,
``Rome``, ``red``...). A tied-embedding model pre-trained on the docs alone pushes the embeddings of
every word it never sees towards one shared direction (measured on the tiny preset: mean cosine 0.88
between the 28 demo words, 0.003 at initialisation). Real pre-training corpora cover the vocabulary
of later tasks; these stories do that for the demo: the same words, names, cities and colours in
simple sentences with a fixed fact per word, some words in capitals, and word runs that recur within
a story (text in which looking back and copying pays). They hold no instruction prompt of the task
families. Within the demo's pre-training budget they do not make the tiny model copy from its
context (docs/TROUBLESHOOTING.md, "Poor generation quality").

Deterministic: a fixed seed, independent of the demo's ``--seed`` (which varies the instructions only).
"""
from __future__ import annotations

import random

STORY_SEED = "demo-stories/2"
# What each word, city and colour is like: a word always meets the same contexts, as in real text. Words
# dropped into interchangeable slots alone would give the model no reason to tell them apart, and their
# embeddings stay nearly parallel (mean cosine 0.83 between the demo words after pre-training on
# stories without these facts).
FACTS = {
    "apple": "grows on a tree and tastes sweet", "bird": "sings in the morning", "box": "has a lid",
    "cake": "is baked for a party", "desk": "has two drawers", "egg": "comes from a hen",
    "fish": "swims in the sea", "game": "is played with friends", "hat": "is worn on the head",
    "ink": "stains your fingers", "jam": "is spread on bread", "kite": "flies on a windy day",
    "lamp": "gives light at night", "leaf": "falls in autumn", "moon": "shines in the night sky",
    "nut": "has a hard shell", "owl": "hoots at night", "pen": "writes with ink",
    "queen": "wears a crown", "rain": "falls from the clouds", "road": "leads to the next town",
    "star": "twinkles in the dark", "sun": "rises in the east", "tree": "has deep roots",
    "van": "carries boxes to the shop", "wolf": "howls at the moon", "yarn": "is used to knit a scarf",
    "zoo": "has many animals",
}
PLACES = {
    "Cairo": "on the Nile", "Dakar": "in Senegal", "Kyiv": "in Ukraine", "Lima": "in Peru",
    "Oslo": "in Norway", "Paris": "in France", "Perth": "in Australia", "Quito": "in Ecuador",
    "Rome": "in Italy", "Seoul": "in Korea",
}
SHADES = {
    "black": "coal", "blue": "the sky", "gold": "a crown", "gray": "a storm cloud", "green": "grass",
    "pink": "a rose", "red": "a cherry", "white": "snow",
}
BOOKS = 60
STORIES_PER_BOOK = 25


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _story(rng: random.Random, words, names, cities, colors) -> str:
    who, friend = rng.sample(names, 2)
    city = rng.choice(cities)
    things = rng.sample(words, rng.randint(3, 6))
    color = rng.choice(colors)
    seq = " ".join(things)
    bag = rng.sample(words, rng.randint(3, 6))
    head = [
        f"{who} lives in {city}.",
        f"{who} has {_a(color)} {things[0]} and a friend called {friend}.",
        f"One day {who} wrote the words {seq} on a card.",
    ]
    body = [f"The {w} {FACTS[w]}." for w in rng.sample(words, 2)] + [
        f"{city} is {PLACES[city]}.",
        f"The {color} {things[0]} was as {color} as {SHADES[color]}.",
        f"{who} saw {_a(things[1])}. The {things[1]} {FACTS[things[1]]}.",
        f"There were {len(things)} words on the card.",
        f"{who} and {friend} walked through {city} with the {color} {things[0]}.",
        f"A sign in {city} said {rng.choice(words).upper()} in big letters.",
        f"{friend} likes the color {rng.choice(colors)} and visits {rng.choice(cities)} in spring.",
        f"{who} shouted {things[-1].upper()} and everyone laughed.",
    ]
    rng.shuffle(body)
    # Word runs that come back later in the same story: text in which looking back and copying pays,
    # which is the skill the instruction families build on.
    tail = [
        f"{friend} read the card aloud: {seq}.",
        f"{friend} packed {' '.join(bag)} into a bag.",
        f"Is there {_a(rng.choice(words))} on the card? {friend} looked again: {seq}.",
        f"At home {friend} took out {' '.join(bag)}.",
        f"{who} read the card once more: {seq}.",
    ]
    return " ".join(head + body[: rng.randint(3, len(body))] + tail)


def story_documents(words, names, cities, colors) -> list[tuple[str, str]]:
    """[(name, text)]: ``BOOKS`` documents of ``STORIES_PER_BOOK`` stories, one story per paragraph."""
    rng = random.Random(STORY_SEED)
    docs = []
    for book in range(BOOKS):
        stories = [_story(rng, words, names, cities, colors) for _ in range(STORIES_PER_BOOK)]
        docs.append((f"stories_{book:03d}", "\n\n".join(stories) + "\n"))
    return docs
