"""Held-out conversations shared by the tests that render a trained template through its exported Jinja.

A single turn, a system prompt before several turns (a newline and surrounding spaces in the content), text that
looks like Jinja and quotes, and a system prompt of two paragraphs."""
from __future__ import annotations

CONVERSATIONS = [
    [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "The answer is 5."}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Sort: b a c"},
     {"role": "assistant", "content": "a b c"}, {"role": "user", "content": "Now reverse it.\nPlease."},
     {"role": "assistant", "content": " c b a "}],
    [{"role": "user", "content": "Hi \"there\" \\ {{ not jinja }} {% raw %}"}, {"role": "assistant", "content": "Hello."},
     {"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}],
    [{"role": "system", "content": "You count words.\n\nOnly digits."},
     {"role": "user", "content": "Count: one two"}, {"role": "assistant", "content": "2"}],
]
