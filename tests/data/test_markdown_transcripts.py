"""The markdown extractor: speaker markers from config, not fooled by code, lists, front matter or preambles."""
from __future__ import annotations

import time
from collections import Counter

import pytest

from utils.common.errors import UserError
from utils.data.conversations import Conversation, iter_conversations
from utils.data.markdown_transcripts import compile_speakers, split_turns
from utils.data.dataset_entry import DatasetSpec, Participants

BOLD = {"user": ["**Laurent-Philippe**:", "**User**:"], "assistant": ["**Mnemosyne**:", "**Assistant**:"]}


def turns(text: str, participants=None, **options) -> list[tuple[str, str]]:
    options = {"use_regex": False, "case_sensitive": True, **options}
    speakers = compile_speakers(participants or BOLD, **options)
    return [(t["role"], t["content"]) for t in split_turns(text, speakers)]


def test_bold_markers_text_on_the_marker_line_and_stripping():
    text = "**Laurent-Philippe**:  Hello there.  \nSecond line.\n\n**Mnemosyne**: Hi!\n\n"
    assert turns(text) == [("user", "Hello there.  \nSecond line."), ("assistant", "Hi!")]


def test_look_alikes_in_code_fences_are_content():
    text = ("**User**: show me\n"
            "**Assistant**: Here:\n"
            "````markdown\n"
            "**User**: inside a 4-backtick fence\n"
            "```\n"                       # shorter: does not close the 4-backtick fence
            "**User**: still inside\n"
            "````\n"
            "~~~\n"
            "**User**: tilde fence\n"
            "~~~~\n"                      # longer closer of the same character closes it
            "done\n"
            "**User**: thanks")
    got = turns(text)
    assert [r for r, _ in got] == ["user", "assistant", "user"]
    assert "still inside" in got[1][1] and "tilde fence" in got[1][1] and got[1][1].endswith("done")


def test_list_items_and_deep_indentation_are_content():
    text = ("**User**: list please\n**Assistant**: Sure:\n"
            "- **User**: a bullet\n* **User**: a star\n+ **User**: a plus\n1. **User**: numbered\n"
            "2) **User**: numbered too\n    **User**: indented code\n   **User**: three spaces is a marker")
    got = turns(text)
    assert [r for r, _ in got] == ["user", "assistant", "user"]
    assert got[1][1].count("**User**") == 6 and got[2][1] == "three spaces is a marker"


def test_front_matter_and_preamble_are_dropped_and_same_speaker_blocks_kept_apart_here():
    text = "---\ntitle: x\nauthor: **User**: not a turn\n---\n# Title\nDate: today\n\n## User\nhi\n## User\nagain\n## AI\nyo"
    got = turns(text, {"user": ["## User"], "assistant": ["## AI"]})
    assert got == [("user", "hi"), ("user", "again"), ("assistant", "yo")]  # merged by conversations


def test_plain_markers_need_a_word_boundary_and_case_switch():
    speakers = {"user": ["# Me"], "assistant": ["# ChatGPT"]}
    assert turns("# Me\nq\n# Mechanics\n# ChatGPT\na", speakers) == [("user", "q\n# Mechanics"), ("assistant", "a")]
    assert turns("# me\nq\n# chatgpt\na", speakers) == []
    assert turns("# me\nq\n# CHATGPT\na", speakers, case_sensitive=False) == [("user", "q"), ("assistant", "a")]


def test_regex_markers_and_longest_match_wins():
    speakers = {"user": [r"\*\*(Human|User)\*\*:"], "assistant": [r"\*\*[A-Z][a-z]+\*\*:", r"\*\*User Bot\*\*:"]}
    got = turns("**Human**: hi\n**Claude**: hello\n**User Bot**: beep", speakers, use_regex=True)
    assert got == [("user", "hi"), ("assistant", "hello"), ("assistant", "beep")]


def test_ignore_blocks_ignore_lines_trailing_rules_and_crlf():
    speakers = {"user": ["# User"], "assistant": ["# Assistant"], "ignore": ["# Tool"]}
    speakers_ = compile_speakers(speakers, use_regex=False, case_sensitive=True,
                                 ignore_lines=[r"Date: \d{4}-\d\d-\d\d.*"])
    text = "# User\r\nDate: 2025-01-01 10:00\r\nq\r\n\r\n---\r\n# Assistant\r\r\ncode\r\n# Tool\r\n55\r\n# Assistant\r\nDate: 2025-01-01 x\r\nit is 55\r\n---"
    assert [(t["role"], t["content"]) for t in split_turns(text, speakers_)] == [
        ("user", "q"), ("assistant", "code"), ("assistant", "it is 55")]


@pytest.mark.parametrize("pattern, message", [
    ("**User(**:", "invalid regex"),
    ("(a+)+$", "nested repetition"),
    (r"(\w+\s?)*:", "nested repetition"),
    (r"\s*", "matches an empty line"),
])
def test_bad_regexes_are_user_errors_naming_pattern_role_and_entry(tmp_path, pattern, message):
    spec = DatasetSpec("my_chats", "markdown_transcripts", directories=["."], use_regex=True,
                       participants=Participants(user=["U:"], assistant=[pattern]))
    (tmp_path / "a.md").write_text("U: hi\nA: yo")
    with pytest.raises(UserError, match=message) as err:
        list(iter_conversations(spec, tmp_path))
    assert str(err.value).startswith(f"dataset 'my_chats': participants.assistant: {pattern!r}")


def test_plain_markers_with_regex_characters_are_literal():
    assert turns("(a+)+ q\n[bot] a", {"user": ["(a+)+"], "assistant": ["[bot]"]}) == [("user", "q"), ("assistant", "a")]


def test_long_lines_stay_fast():
    line = "a" * 200_000
    speakers = {"user": [r"a+b"], "assistant": [r"[^:]*x:"]}
    start = time.perf_counter()
    got = turns(f"{line}\n" * 20, speakers, use_regex=True)
    assert got == [] and time.perf_counter() - start < 2


# --- the real exports ---------------------------------------------------------------------------------

EXPORTS = Participants(
    user=["**Human**:", "## 👤 User", "# Me", "# User"],
    assistant=["**GPT**:", "## 🤖 Assistant", "# ChatGPT", "# Assistant"],
    system=["### System"],
    ignore=["# Code output", "# Tool"],
)
EXPORT_LINES = [r"Date: \d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}.*", r"\(main branch ⎇\)", r"#{6} [0-9a-f-]{36}",
                r"\[(parent|child) [^\]]*\]\(#[0-9a-f-]{36}\)"]


def test_shared_markdown_exports(shared_data):
    spec = DatasetSpec("markdown_chats", "markdown_transcripts", directories=["markdown_chats"],
                       participants=EXPORTS, ignore_lines=EXPORT_LINES)
    got = list(iter_conversations(spec, shared_data))
    counts = Counter("conversations" if isinstance(x, Conversation) else x.reason for x in got)
    print(f"\nmarkdown_chats: {dict(counts)}")
    convs = {x.origin.split("/")[-1]: x.messages for x in got if isinstance(x, Conversation)}
    assert counts == {"conversations": 9, "no_conversation_found": 3}  # the 3 are the SOURCE.md files
    for name in ("fibonacci_dollar_math.md", "fibonacci_me_chatgpt_headings.md",
                 "fibonacci_tree_anchored_headings.md", "fibonacci_user_assistant_headings.md"):
        roles = [m["role"] for m in convs[name]]
        assert roles == ["user", "assistant"], name  # code-output/tool blocks dropped, replies merged
        assert "# Define the function" in convs[name][1]["content"]
        assert "55\n```" not in convs[name][1]["content"] and "child" not in convs[name][1]["content"]
    human_gpt = convs["readme_example_human_gpt.md"]
    assert [m["role"] for m in human_gpt] == ["user", "assistant"] and "- **Headers**" in human_gpt[1]["content"]
    math = convs["2025-01-15_Math_Question.md"]
    assert len(math) == 4 and math[0]["content"] == "What is the square root of 144?"
    assert not any("Date:" in m["content"] or m["content"].endswith("---") for c in convs.values() for m in c)
