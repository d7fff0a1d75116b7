"""Reasoning traces in the data: the forms a row holds them in, the dataset setting reasoning (train,
keep_context, drop), how the project's templates and a tokenizer's own (Qwen3's) render them, and the refusals."""
from __future__ import annotations

import json

import pytest

from chat_helpers import prepare_args, published_template, read, with_template
from scripts_loader import load_script
from utils.common.config import validate
from utils.common.errors import UserError, run_cli
from utils.common.labels import IGNORE
from utils.data.conversations import Conversation, Skip
from utils.data.dataset_entry import DatasetSpec
from utils.data import templates
from utils.data.templates import MAX_MESSAGES, get_template
from utils.data.tokenizer import IM_END, IM_START, load_tokenizer
from utils.data.tool_template import ToolTemplateError

QUESTION, ANSWER, TRACE = "What is two plus two?", "It is 4.", "Two plus two makes four."
TRACED = {"role": "assistant", "content": ANSWER, "reasoning_content": TRACE}
CONV = [{"role": "user", "content": QUESTION}, TRACED]
CALL = {"type": "function", "function": {"name": "add", "arguments": {"a": 2, "b": 2}}}
PLAIN_CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
"""A chat_template that renders no reasoning_content (as SmolLM2's and Qwen2.5's)."""


def user(text: str = QUESTION) -> dict:
    return {"role": "user", "content": text}


def typed(*parts: tuple[str, str]) -> list[dict]:
    """LLaMA-Factory's typed content: [{type, value}, ...]."""
    return [{"type": kind, "value": value} for kind, value in parts]


def supervised_runs(marked: str) -> list[str]:
    """The ``[[...]]`` runs of ``mark_supervised``'s text."""
    return [run.split("]]")[0] for run in marked.split("[[")[1:]]


@pytest.fixture
def qwen3(toy_tokenizer_dir, tmp_path):
    return load_tokenizer(with_template(toy_tokenizer_dir, tmp_path, published_template("qwen3.jinja")))


# ---------------------------------------------------------------------- where a row holds a trace
@pytest.mark.parametrize("row,spec", [
    ({"messages": [user(), TRACED]}, {}),
    ({"messages": [user(), {"role": "assistant", "content": ANSWER, "thought": TRACE}]},
     {"format": "messages", "text_fields": {"reasoning": "thought"}}),
    ({"messages": [user(), {"role": "assistant", "content": f"<think>\n{TRACE}\n</think>\n\n{ANSWER}"}]}, {}),
    ({"conversations": [{"from": "human", "value": QUESTION},
                        {"from": "gpt", "value": f"  <think>{TRACE}</think>{ANSWER}"}]}, {}),
    ({"conversations": [{"from": "human", "value": QUESTION},
                        {"from": "gpt", "value": ANSWER, "reasoning_content": TRACE}]}, {}),
    ({"messages": [{"role": "user", "content": typed(("text", QUESTION))},
                   {"role": "assistant", "content": typed(("reasoning", TRACE), ("text", ANSWER))}]}, {}),
], ids=["reasoning_content", "text_fields.reasoning", "think_block", "sharegpt_think_block",
        "sharegpt_reasoning_content", "typed_parts"])
def test_each_form_becomes_the_assistant_trace(tmp_path, row, spec):
    [conv] = read(tmp_path, [row], **spec)
    assert isinstance(conv, Conversation)
    assert list(conv.messages) == [user(), TRACED]


def test_typed_parts_with_a_tool_call_keep_trace_and_call(tmp_path):
    row = {"messages": [{"role": "user", "content": typed(("text", QUESTION))},
                        {"role": "assistant", "content": typed(("reasoning", TRACE),
                                                               ("tool_call", json.dumps(CALL["function"])))},
                        {"role": "tool", "content": typed(("text", "4"))},
                        {"role": "assistant", "content": typed(("text", ANSWER))}]}
    [conv] = read(tmp_path, [row])
    assert conv.messages[1] == {"role": "assistant", "content": "", "reasoning_content": TRACE, "tool_calls": [CALL]}
    assert conv.messages[3] == {"role": "assistant", "content": ANSWER}


@pytest.mark.parametrize("row,reason", [
    ({"messages": [user(), {**TRACED, "reasoning_content": 5}]}, "bad_reasoning"),
    ({"messages": [user(), {**TRACED, "content": f"<think>{TRACE}</think>{ANSWER}"}]}, "bad_reasoning"),
    ({"messages": [{**user(), "reasoning_content": TRACE}, TRACED]}, "misplaced_reasoning"),
    ({"messages": [{"role": "user", "content": typed(("reasoning", TRACE), ("text", QUESTION))}, TRACED]},
     "misplaced_reasoning"),
    ({"messages": [user(), {"role": "assistant", "content": typed(("text", ANSWER), ("reasoning", TRACE))}]},
     "misplaced_reasoning"),
    ({"messages": [user(), {"role": "assistant", "content": "First."}, TRACED]}, "misplaced_reasoning"),
    ({"messages": [user(), {"role": "assistant", "content": f"<think>{TRACE} {ANSWER}"}]}, "unclosed_think"),
], ids=["not_text", "two_traces", "on_a_user_turn", "typed_on_a_user_turn", "typed_after_the_text",
        "after_the_answer", "unclosed_think"])
def test_bad_traces_are_one_counted_skip_per_row(tmp_path, row, reason):
    items = read(tmp_path, [row, {"messages": CONV}])
    assert isinstance(items[0], Skip) and items[0].reason == reason and items[0].origin.endswith("rows.jsonl:1")
    assert isinstance(items[1], Conversation)


# ---------------------------------------------------------------------- the reasoning setting
def test_train_supervises_the_trace_keep_context_masks_it_drop_removes_it(toy_tokenizer):
    template = get_template("chatml", toy_tokenizer)
    train, keep, drop = (template.encode(CONV, reasoning=mode) for mode in ("train", "keep_context", "drop"))
    plain = template.encode([user(), {"role": "assistant", "content": ANSWER}])
    assert keep.input_ids == train.input_ids and drop.input_ids == plain.input_ids
    assert TRACE in toy_tokenizer.decode(train.input_ids) and TRACE not in toy_tokenizer.decode(drop.input_ids)
    assert (train.traces, keep.traces, drop.traces) == (1, 1, 0)
    trained = [toy_tokenizer.decode([i for i, lab in zip(e.input_ids, e.labels) if lab != IGNORE])
               for e in (train, keep)]
    assert TRACE in trained[0] and ANSWER in trained[0]
    assert TRACE not in trained[1] and "think" not in trained[1] and trained[1].strip() == ANSWER + IM_END
    assert drop.labels == plain.labels
    assert supervised_runs(template.mark_supervised(CONV, reasoning="train")) == [
        f"<think>\n{TRACE}\n</think>\n{ANSWER}{IM_END}"]
    marked = template.mark_supervised(CONV, reasoning="keep_context")
    assert f"<think>\n{TRACE}\n</think>\n" in marked.split("[[")[0] and supervised_runs(marked) == [ANSWER + IM_END]


def test_the_setting_is_validated_in_one_line_naming_the_field(tmp_path):
    with pytest.raises(UserError, match=r"dataset 'x': reasoning: unknown value 'sometimes'; use one of train, "
                                        r"keep_context, drop") as err:
        DatasetSpec("x", type="json", dataset_name="a.json", reasoning="sometimes")
    assert "\n" not in str(err.value)
    config = {"name": "x", "template": "chatml",
              "datasets": [{"name": "a", "type": "json", "dataset_name": "a.json", "reasoning": "sometimes"}]}
    with pytest.raises(UserError, match=r"cfg.json: datasets\[0\]\.reasoning: 'sometimes' is not one of") as err:
        validate(config, "sft_dataset", "cfg.json")
    assert "\n" not in str(err.value)


# ---------------------------------------------------------------------- how templates render traces
@pytest.mark.parametrize("name", ["chatml", "instruct", "chat", "alpaca"])
def test_project_templates_write_the_think_block_before_the_answer(toy_tokenizer, name):
    text = get_template(name, toy_tokenizer).render(CONV)
    assert f"<think>\n{TRACE}\n</think>\n{ANSWER}" in text and text.count(TRACE) == 1


TWO_TURNS = [{"role": "system", "content": "Think first."}, user("What is one plus one?"),
             {"role": "assistant", "content": "It is 2.", "reasoning_content": "One and one make two."},
             user(), TRACED]


@pytest.mark.parametrize("conv", [CONV, TWO_TURNS, [user(), {**TRACED, "content": "", "tool_calls": [CALL]},
                                                    {"role": "tool", "content": "4"}, TRACED]],
                         ids=["one_turn", "two_turns", "tool_call"])
def test_project_chatml_equals_its_exported_template_and_hf_masks(toy_tokenizer, conv):
    """chatml and the tokenizer's chat_template (CHATML_TEMPLATE, which marks generations) write every trace the
    same way; ids and supervised tokens equal HF's ``return_assistant_tokens_mask``."""
    hf = toy_tokenizer.apply_chat_template(conv, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
    for name in ("chatml", "tokenizer"):
        template = get_template(name, toy_tokenizer)
        assert template.renders_reasoning
        assert template.render(conv) == toy_tokenizer.apply_chat_template(conv, tokenize=False)
        encoded = template.encode(conv)
        assert encoded.input_ids == list(hf["input_ids"])
        assert [int(label != IGNORE) for label in encoded.labels] == list(hf["assistant_masks"])


QWEN3_TOOLS = [user("What is one plus one?"),
               {"role": "assistant", "content": "", "reasoning_content": "I add with the tool.", "tool_calls": [CALL]},
               {"role": "tool", "content": "2"},
               {"role": "assistant", "content": "It is 2.", "reasoning_content": "The tool said 2."},
               user(), TRACED]


@pytest.mark.parametrize("conv,traces", [(CONV, 1), (TWO_TURNS, 1), (QWEN3_TOOLS, 1), (QWEN3_TOOLS[:4], 2)],
                         ids=["one_turn", "two_turns", "tool_steps_then_a_question", "tool_steps"])
def test_qwen3_ids_equal_hf_and_earlier_traces_are_left_out(qwen3, conv, traces):
    template = get_template("tokenizer", qwen3)
    assert template.renders_reasoning
    encoded = template.encode(conv)
    assert encoded.input_ids == list(qwen3.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"])
    assert encoded.traces == traces
    rendered = [m["reasoning_content"] for m in conv if m.get("reasoning_content")]
    text = template.render(conv)
    assert [t in text for t in rendered] == [k >= len(rendered) - traces for k in range(len(rendered))]
    runs = supervised_runs(template.mark_supervised(conv))
    assert runs[-1] == f"<think>\n{conv[-1]['reasoning_content']}\n</think>\n\n{conv[-1]['content']}{IM_END}"
    assert len(runs) == sum(m["role"] == "assistant" for m in conv)
    keep = supervised_runs(template.mark_supervised(conv, reasoning="keep_context"))
    assert keep[-1] == conv[-1]["content"] + IM_END and not any("think>" in run for run in keep)


def test_a_template_without_traces_refuses_them_unless_dropped(toy_tokenizer_dir, tmp_path):
    template = get_template("tokenizer", load_tokenizer(with_template(toy_tokenizer_dir, tmp_path, PLAIN_CHATML)))
    assert not template.renders_reasoning
    for mode in ("train", "keep_context"):
        with pytest.raises(ToolTemplateError) as err:
            template.encode(CONV, reasoning=mode)
        assert err.value.reason == "template_without_reasoning"
    assert template.encode(CONV, reasoning="drop").input_ids == template.encode(CONV[:1] + [
        {"role": "assistant", "content": ANSWER}]).input_ids


@pytest.mark.parametrize("name", ["chatml", "qwen3"])
def test_control_token_text_in_a_trace_stays_plain_text(toy_tokenizer, qwen3, name):
    trace = f"Careful: {IM_END} is not the end, {IM_START}user neither."
    conv = [user(), {**TRACED, "reasoning_content": trace}]
    tok = qwen3 if name == "qwen3" else toy_tokenizer
    template = get_template("tokenizer" if name == "qwen3" else name, tok)
    encoded = template.encode(conv)
    specials = {tok.convert_tokens_to_ids(IM_START), tok.convert_tokens_to_ids(IM_END)}
    assert sum(i in specials for i in encoded.input_ids) == 4  # the two turns' own <|im_start|> and <|im_end|>
    assert trace in tok.decode(encoded.input_ids) and encoded.traces == 1


# ---------------------------------------------------------------------- the prepare stage
def write_rows(tmp_path, rows) -> "Path":
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


TRACED_ROWS = [{"messages": [user(f"What is {n} plus two?"),
                             {"role": "assistant", "content": f"It is {n + 2}.",
                              "reasoning_content": f"{n} and two make {n + 2}."}]} for n in range(6)]
BAD_ROWS = [{"messages": [user(), {**TRACED, "reasoning_content": ["no"]}]},
            {"messages": [{**user(), "reasoning_content": TRACE}, TRACED]},
            {"messages": [user(), {"role": "assistant", "content": f"<think>{TRACE}"}]}]


@pytest.mark.parametrize("mode,rendered", [("train", 6), ("keep_context", 6), ("drop", 0)])
def test_prepare_counts_traces_and_each_drop_reason(toy_tokenizer_dir, tmp_path, capsys, mode, rendered):
    data, out = write_rows(tmp_path, TRACED_ROWS + BAD_ROWS), tmp_path / "out"
    args = prepare_args(tmp_path, data, out, toy_tokenizer_dir, "chatml", name="r", kind="jsonl", reasoning=mode)
    assert run_cli(load_script("02_prepare_sft_corpus").main, args) == 0
    source = json.loads((out / "manifest.json").read_text())["sources"]["r"]
    assert source["read"] == 9 and source["skipped_by_reason"] == {
        "bad_reasoning": 1, "misplaced_reasoning": 1, "unclosed_think": 1}
    assert source["reasoning"] == {"mode": mode, "traces": 6, "rendered": rendered}
    card = (out / "DATA_CARD.md").read_text(encoding="utf-8")
    assert "## Reasoning traces" in card and f"| r | {mode} | 6 | {rendered} |" in card
    assert all(f"malformed:{reason}" in card for reason in source["skipped_by_reason"])
    example = card.split("### r")[1]
    assert ("[[<think>\n" in example) == (mode == "train") and ("<think>" in example) == (mode != "drop")


def test_a_template_without_traces_stops_the_stage_in_one_line(toy_tokenizer_dir, tmp_path, capsys):
    data, out = write_rows(tmp_path, TRACED_ROWS), tmp_path / "out"
    tokenizer = with_template(toy_tokenizer_dir, tmp_path, PLAIN_CHATML)
    prepare = load_script("02_prepare_sft_corpus").main
    assert run_cli(prepare, prepare_args(tmp_path, data, out, tokenizer, name="r", kind="jsonl",
                                         reasoning="drop")) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    capsys.readouterr()
    code = run_cli(prepare, prepare_args(tmp_path, data, out, tokenizer, name="r", kind="jsonl") + ["--force"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "rows.jsonl:1" in err[0]
    assert "renders no reasoning_content" in err[0] and "reasoning to drop" in err[0]
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["config.json", "out", "rows.jsonl", "tok"])


REASON_TOOLS = "tools/llamafactory_tool_demos/reason_tool_use_demo_50.jsonl"


@pytest.mark.parametrize("template", ["chatml", "qwen3"])
def test_llamafactory_reasoning_and_tool_demo_prepares(shared_data, toy_tokenizer_dir, tmp_path, capsys, template):
    """The 50 rows of LLaMA-Factory's reason_tool_use demo (typed content: reasoning, text and tool_call parts):
    nothing skipped, every trace and call read; chatml renders every trace, Qwen3's template those after the
    last user message."""
    data = shared_data / REASON_TOOLS
    if not data.is_file():
        pytest.skip(f"{REASON_TOOLS} is not in the shared data")
    raw = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines()]
    rows = [r["messages"] for r in raw]
    parts = [p["type"] for r in rows for m in r for p in m["content"] if m["role"] == "assistant"]
    last_query = [max(k for k, m in enumerate(r) if m["role"] == "user") for r in rows]
    after = sum(m["role"] == "assistant" for r, q in zip(rows, last_query) for m in r[q:])
    tokenizer, name = toy_tokenizer_dir, template
    if template == "qwen3":
        tokenizer, name = with_template(toy_tokenizer_dir, tmp_path, published_template("qwen3.jinja")), "tokenizer"
    out = tmp_path / "out"
    args = prepare_args(tmp_path, data, out, tokenizer, name, name="reason", kind="jsonl")
    assert run_cli(load_script("02_prepare_sft_corpus").main, args) == 0
    source = json.loads((out / "manifest.json").read_text())["sources"]["reason"]
    assert source["read"] == 50 and source["skipped"] == 0 and source["dropped"] == 0
    traces = parts.count("reasoning")
    assert (traces, after) == (112, 72)  # the demo as SOURCE.md describes it
    assert source["reasoning"] == {"mode": "train", "traces": traces,
                                   "rendered": traces if template == "chatml" else after}
    assert source["tool_use"] == {"conversations_with_tools": sum(bool(json.loads(r["tools"])) for r in raw), "tool_calls": parts.count("tool_call"),
                                  "tool_results": sum(m["role"] == "tool" for r in rows for m in r)}


def test_every_trace_sentinel_is_a_sentinel_and_longer_conversations_are_refused(toy_tokenizer):
    """Message i's trace stands as chr(_SENTINEL0 + _TRACE + i) while rendering: for every i below
    MAX_MESSAGES it must be a character the template's output is searched for."""
    last = chr(templates._SENTINEL0 + templates._TRACE + MAX_MESSAGES - 1)
    assert templates._SENTINEL_RE.fullmatch(last) and not templates._SENTINEL_RE.fullmatch(chr(ord(last) + 1))
    conv = [user("q"), {**TRACED, "content": "a"}] * (MAX_MESSAGES // 2 + 1)
    with pytest.raises(ValueError, match=f"more than {MAX_MESSAGES} messages"):
        get_template("chatml", toy_tokenizer).encode(conv)
