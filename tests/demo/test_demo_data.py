"""The demo data generator: deterministic, held out, checkable, stdlib-only corpus, tricky transcripts."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from reliability_helpers import snapshot
from utils.common.errors import UserError
from utils.demo.build import generate_demo_data
from utils.demo.corpus import CORPUS_MODULES, clean_text
from utils.demo.tasks import PHRASINGS, TASKS, WORDS, prompt_key
from utils.eval.metrics import check_answer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "generate_demo_data.py"
SMALL = {"num_train": 240, "num_test": 120}  # 20 and 10 per family


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("demo") / "demo"
    generate_demo_data(out, seed=7, **SMALL)
    return out


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


# ---------------------------------------------------------------- determinism and writing

def test_same_seed_is_byte_identical(tmp_path, demo):
    generate_demo_data(tmp_path / "again", seed=7, **SMALL)
    assert snapshot(tmp_path / "again") == snapshot(demo)


def test_cli_in_a_fresh_process_matches(tmp_path, demo):
    # Another process with another hash seed: nothing may depend on set/dict hashing or object ids.
    env = {**os.environ, "PYTHONHASHSEED": "4321"}
    cmd = [sys.executable, str(SCRIPT), "--output_dir", str(tmp_path / "cli"), "--seed", "7",
           "--num_train", str(SMALL["num_train"]), "--num_test", str(SMALL["num_test"])]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "wrote" in done.stdout
    assert snapshot(tmp_path / "cli") == snapshot(demo)


def test_other_seed_changes_the_instruct_data_only(tmp_path, demo):
    generate_demo_data(tmp_path / "other", seed=8, **SMALL)
    other, same = snapshot(tmp_path / "other"), snapshot(demo)
    assert other["instruct/train.jsonl"] != same["instruct/train.jsonl"]
    assert other["instruct/test.jsonl"] != same["instruct/test.jsonl"]
    assert all(other[k] == same[k] for k in same if k.startswith(("corpus/", "transcripts/")))


def test_existing_dir_is_refused_and_untouched_without_force(tmp_path):
    out = tmp_path / "demo"
    out.mkdir()
    (out / "keep.txt").write_text("mine", encoding="utf-8")
    with pytest.raises(UserError, match="--force"):
        generate_demo_data(out, **SMALL)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]  # no temp dir left behind

    generate_demo_data(out, force=True, **SMALL)
    assert not (out / "keep.txt").exists() and (out / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["demo"]


def test_cli_refusal_is_one_line_and_exit_2(tmp_path, capsys):
    import importlib.util

    from utils.common.errors import run_cli

    spec = importlib.util.spec_from_file_location("generate_demo_data", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    (tmp_path / "demo").mkdir()
    argv = ["--output_dir", str(tmp_path / "demo"), "--num_train", "14", "--num_test", "14"]
    assert run_cli(script.main, argv) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_too_few_items_for_every_family_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match="--num_test"):
        generate_demo_data(tmp_path / "demo", num_train=100, num_test=5)


# ---------------------------------------------------------------- instruction splits

def test_train_lines_are_canonical_and_well_formed(demo):
    lines = (demo / "instruct" / "train.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(lines) == SMALL["num_train"]
    for line in lines:
        row = json.loads(line)
        assert line == json.dumps(row, ensure_ascii=False, sort_keys=True)
        assert set(row) == {"messages", "task"} and row["task"] in TASKS
        roles = [m["role"] for m in row["messages"]]
        body = roles[1:] if roles[0] == "system" else roles
        assert body == ["user", "assistant"] * (len(body) // 2) and body
        assert all(isinstance(m["content"], str) and m["content"] for m in row["messages"])


def test_test_lines_end_with_a_user_turn_and_carry_a_reference(demo):
    for row in read_jsonl(demo / "instruct" / "test.jsonl"):
        assert set(row) == {"messages", "reference", "task"}
        assert row["messages"][-1]["role"] == "user" and row["reference"]


def test_mix_of_single_multi_turn_and_system(demo):
    rows = read_jsonl(demo / "instruct" / "train.jsonl")
    multi = sum(sum(m["role"] == "user" for m in r["messages"]) == 2 for r in rows)
    system = sum(r["messages"][0]["role"] == "system" for r in rows)
    assert 0.05 < multi / len(rows) < 0.30 and 0.10 < system / len(rows) < 0.35


def test_test_prompts_are_held_out(demo):
    train = read_jsonl(demo / "instruct" / "train.jsonl")
    test = read_jsonl(demo / "instruct" / "test.jsonl")
    train_prompts = {json.dumps(r["messages"][:-1], sort_keys=True) for r in train}
    assert not any(json.dumps(r["messages"], sort_keys=True) in train_prompts for r in test)
    # Stricter: the final question itself is new, even ignoring case and spacing.
    train_questions = {prompt_key(r["messages"][-2:-1]) for r in train}
    test_questions = [prompt_key(r["messages"][-1:]) for r in test]
    assert len(set(test_questions)) == len(test_questions)
    assert not set(test_questions) & train_questions


def test_every_family_in_both_splits_and_balanced(demo):
    manifest = json.loads((demo / "manifest.json").read_text(encoding="utf-8"))
    for split in ("train", "test"):
        per_task = manifest["instruct"][split]["per_task"]
        assert set(per_task) == set(TASKS)
        assert max(per_task.values()) - min(per_task.values()) <= 1


def _runs(text: str, upper: bool = False) -> list[list[str]]:
    """Runs of demo words separated by single spaces, in order (no template word is a demo word)."""
    words = [w.upper() for w in WORDS] if upper else list(WORDS)
    alt = "|".join(words)
    return [run.split(" ") for run in re.findall(rf"\b(?:{alt})(?: (?:{alt}))*\b", text)]


def _list_and_probe(prompt: str) -> tuple[list[str], str | None]:
    """The word list (the longest run) and the probe word asked about (a one-word run), if any."""
    runs = sorted(_runs(prompt), key=len, reverse=True)
    return runs[0], (runs[1][0] if len(runs) > 1 else None)


def _expected(task: str, prompt: str) -> str:
    """Re-derive the answer from the prompt text alone, in any phrasing, independently of the generators."""
    words, probe = _list_and_probe(prompt) if _runs(prompt) else ([], None)
    simple = {"copy_words": lambda: " ".join(words), "reverse_words": lambda: " ".join(words[::-1]),
              "sort_words": lambda: " ".join(sorted(words)), "count_words": lambda: str(len(words)),
              "first_word": lambda: words[0], "last_word": lambda: words[-1],
              "next_word": lambda: words[words.index(probe) + 1],
              "membership": lambda: "yes" if probe in words else "no",
              "uppercase": lambda: " ".join(words).upper(),
              "lowercase": lambda: " ".join(max(_runs(prompt, upper=True), key=len)).lower()}
    if task in simple:
        return simple[task]()
    if task == "extract_field":
        field = re.search(r"\b(name|city|color)\b", prompt).group(1)
        return re.search(rf"{field.title()}: (\w+)\.", prompt).group(1)
    if task == "make_record":
        pairs = re.findall(r"\b(name|city|color) (\w+)", prompt)
        return " ".join(f"{f.title()}: {v}." for f, v in pairs)
    raise AssertionError(f"no independent check for task {task}")


def test_answers_can_be_recomputed_from_the_prompt(demo):
    test = read_jsonl(demo / "instruct" / "test.jsonl") + read_jsonl(demo / "instruct" / "test_rephrased.jsonl")
    for row in test:
        assert check_answer(row["task"], _expected(row["task"], row["messages"][-1]["content"]),
                            row["reference"]), row
    for row in read_jsonl(demo / "instruct" / "train.jsonl"):
        assert _expected(row["task"], row["messages"][-2]["content"]) == row["messages"][-1]["content"], row
    assert {row["task"] for row in test} == set(TASKS)


def test_check_answer_is_exact_after_stripping():
    assert check_answer("count_words", " 5\n", "5")
    assert not check_answer("count_words", "5.", "5")
    assert not check_answer("uppercase", "Hat", "HAT")


def test_worked_text_is_the_train_split_and_never_a_test_question(demo):
    worked = "\n".join(p.read_text(encoding="utf-8") for p in sorted((demo / "instruct" / "worked").glob("*.txt")))
    blocks = worked.strip().split("\n\n")
    train = read_jsonl(demo / "instruct" / "train.jsonl")
    assert len(blocks) == len(train)
    first = train[0]["messages"]
    assert blocks[0] == "\n".join(f"{m['role'].title()}: {m['content']}" for m in first)
    for row in read_jsonl(demo / "instruct" / "test.jsonl"):
        assert f"User: {row['messages'][-1]['content']}\nAssistant:" not in worked


# ---------------------------------------------------------------- corpus

def test_corpus_is_pydoc_topics_and_stdlib_docstrings(demo):
    from pydoc_data.topics import topics

    pydoc = sorted((demo / "corpus" / "pydoc").glob("*.txt"))
    assert len(pydoc) == len(topics)
    for path in pydoc:
        assert path.read_text(encoding="utf-8") == clean_text(topics[path.stem])
    docstrings = sorted((demo / "corpus" / "docstrings").glob("*.txt"))
    assert len(docstrings) > 100
    for path in docstrings:
        assert path.stem in CORPUS_MODULES
        assert path.read_text(encoding="utf-8").startswith(path.stem)
    json_doc = (demo / "corpus" / "docstrings" / "json.txt").read_text(encoding="utf-8")
    assert clean_text(json.__doc__).strip() in json_doc
    size = sum(p.stat().st_size for p in pydoc + docstrings)
    assert size > 1_000_000


def test_stories_cover_the_instruction_vocabulary_without_instructions(demo):
    from utils.demo.tasks import CITIES, COLORS, NAMES, TASKS

    text = "\n".join(p.read_text(encoding="utf-8") for p in sorted((demo / "corpus" / "stories").glob("*.txt")))
    tokens = set(re.findall(r"[A-Za-z]+", text))
    assert set(WORDS) | set(NAMES) | set(CITIES) | set(COLORS) <= tokens
    assert {w.upper() for w in WORDS} & tokens  # capitals too, for the upper/lowercase families
    train = read_jsonl(demo / "instruct" / "train.jsonl")
    prompts = {m["content"] for r in train for m in r["messages"] if m["role"] == "user"}
    assert not any(p in text for p in prompts)
    assert not any(phrase in text for phrase in ("Repeat the words", "Reverse the words", "Sort the words"))


# ---------------------------------------------------------------- transcripts

def _open_fence(line: str) -> str | None:
    match = re.match(r"(`{3,}|~{3,})", line)
    return match.group(1) if match else None


def scan_blocks(text: str, roles: dict[str, list[str]]) -> list[str]:
    """A minimal reference reading: markers count at line start outside fences and front matter."""
    lines = text.split("\n")
    if lines[0] == "---":
        lines = lines[lines.index("---", 1) + 1:]
    markers = [(marker, role) for role, found in roles.items() for marker in found]
    fence, blocks = None, []
    for line in lines:
        if fence:
            fence = None if set(line.strip()) == {fence[0]} and len(line.strip()) >= len(fence) else fence
        elif _open_fence(line):
            fence = _open_fence(line)
        else:
            blocks += [role for marker, role in markers
                       if (line.strip() == marker if marker.startswith("#") else line.startswith(marker))]
    return blocks


def test_transcripts_match_participants(demo):
    folder = demo / "transcripts"
    participants = json.loads((folder / "PARTICIPANTS.json").read_text(encoding="utf-8"))
    assert sorted(participants) == sorted(p.name for p in folder.glob("*.md"))
    assert 5 <= len(participants) <= 8
    for name, info in participants.items():
        assert set(info["roles"]) == {"user", "assistant", "system"}
        assert scan_blocks((folder / name).read_text(encoding="utf-8"), info["roles"]) == info["blocks"], name
    assert sum(not info["blocks"] for info in participants.values()) == 1


def test_transcripts_hold_the_tricky_cases(demo):
    folder = demo / "transcripts"
    participants = json.loads((folder / "PARTICIPANTS.json").read_text(encoding="utf-8"))
    features = {f for info in participants.values() for f in info["features"]}
    assert {"front_matter", "fenced_marker_lookalikes", "list_item_marker_lookalikes", "system_message",
            "consecutive_same_speaker", "heading_markers", "no_conversation"} <= features
    for name, info in participants.items():
        text = (folder / name).read_text(encoding="utf-8")
        markers = [m for found in info["roles"].values() for m in found]
        naive = sum(line.startswith(m) for line in text.split("\n") for m in markers)
        if "fenced_marker_lookalikes" in info["features"]:
            assert naive > len(info["blocks"]), name  # a marker-looking line sits inside a fence
        if "list_item_marker_lookalikes" in info["features"]:
            assert any(re.match(r"\s*([-*]|\d+\.) " + re.escape(m), line)
                       for line in text.split("\n") for m in markers), name
        if "front_matter" in info["features"]:
            assert text.startswith("---\ntitle: ")


def test_rephrased_questions_use_wordings_that_training_never_uses(demo):
    heldout = {t.split("{")[0] for train_t, held in PHRASINGS.values() for t in held}
    assert all(prefix.strip() for prefix in heldout)  # each held-out phrasing opens with its own words
    train_questions = [m["content"] for r in read_jsonl(demo / "instruct" / "train.jsonl")
                       for m in r["messages"] if m["role"] == "user"]
    assert not any(q.startswith(tuple(heldout)) for q in train_questions)
    rephrased = read_jsonl(demo / "instruct" / "test_rephrased.jsonl")
    assert all(r["messages"][-1]["content"].startswith(tuple(heldout)) for r in rephrased)
    assert {r["task"] for r in rephrased} == set(TASKS)
    train_phrasings = {t for train_t, _ in PHRASINGS.values() for t in train_t}
    assert not train_phrasings & {t for _, held in PHRASINGS.values() for t in held}


def test_domain_conversations_answer_from_the_domain_corpus(demo):
    rows = read_jsonl(demo / "instruct" / "domain.jsonl")
    assert len(rows) > 50
    for row in rows:
        question, answer = (m["content"] for m in row["messages"])
        topic = row["task"].removeprefix("domain:")
        text = " ".join((demo / "corpus" / "pydoc" / f"{topic}.txt").read_text(encoding="utf-8").split())
        assert answer in text, row  # the answer is the corpus's own words
        assert "Python" in question


def test_sections_take_the_opening_paragraph_of_underlined_headings():
    from utils.demo.domain import sections

    text = ("The pass statement\n******************\n\n   pass_stmt ::= \"pass\"\n\n"
            "\"pass\" is a null operation -- when it is executed, nothing happens.\nIt is useful as a "
            "placeholder.\n\nMore text.\n\nShort\n=====\n\nToo short.\n")
    assert sections(text) == [("The pass statement", "\"pass\" is a null operation -- when it is executed, "
                               "nothing happens. It is useful as a placeholder.")]


def test_a_stuck_stdlib_read_names_the_module_it_stopped_on(tmp_path, monkeypatch):
    """The corpus child prints each module before importing it; stuck, the parent says which, in one line."""
    import utils.demo.corpus as corpus

    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\nprintf 'abc\\nhttp.server\\n' >&2\nexec sleep 30\n")
    fake.chmod(0o755)
    monkeypatch.setattr(corpus, "STDLIB_READ_TIMEOUT_S", 1)
    monkeypatch.setattr(corpus.sys, "executable", str(fake))
    with pytest.raises(UserError) as err:
        corpus.corpus_documents()
    message = str(err.value)
    assert "\n" not in message and "while importing 'http.server' (2 of" in message
    assert f"{fake} -I -c 'import http.server'" in message
