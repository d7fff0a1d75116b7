"""Text that is parsed, through the real CLIs: tokenizers whose special tokens strip whitespace, prompts
with leading or trailing whitespace under a template that trims, markdown transcripts with an open fence."""
from __future__ import annotations

import json

from reliability_helpers import script, write_json
from utils.common.errors import run_cli
from shard_helpers import shard_examples
from utils.data.tokenizer import load_tokenizer

PHI3 = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}<|end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|assistant|>\n{% else %}{{ eos_token }}{% endif %}")
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
ROWS = [[{"role": "system", "content": " Be brief.\n"}, {"role": "user", "content": f"\n  What is {a} plus 3?  "},
         {"role": "assistant", "content": f"  The answer is {a + 3}. "}] for a in range(6)] + [
        [{"role": "user", "content": "Say hi"}, {"role": "assistant", "content": "hi"},
         {"role": "user", "content": " and bye "}, {"role": "assistant", "content": "bye\n"}]]


def _tokenizer(toy_dir, out, tokens, template, rstrip: bool):
    from tokenizers import AddedToken

    tok = load_tokenizer(toy_dir)
    tok.add_special_tokens({"additional_special_tokens": [
        AddedToken(t, rstrip=rstrip, special=True, normalized=False) for t in tokens]})
    tok.chat_template = template
    tok.save_pretrained(out)
    return load_tokenizer(out)


def _prepare(tmp_path, tokenizer_dir, rows, template="tokenizer", kind="jsonl", name="rows"):
    raw = tmp_path / f"{name}.{kind}"
    if kind == "jsonl":
        raw.write_text("".join(json.dumps({"messages": r}) + "\n" for r in rows), encoding="utf-8")
    else:
        raw.write_text(rows, encoding="utf-8")
    cfg = write_json(tmp_path / f"{name}_config.json", {
        "name": name, "template": template, "quality_filters": {"dedupe": False},
        "output_params": {"sequence_length": 1024, "train_ratio": 1},
        "datasets": [{"name": name, "type": "markdown" if kind == "md" else kind, "dataset_name": str(raw)}]})
    out = tmp_path / f"data_{name}"
    code = run_cli(script("02_prepare_sft_corpus").main, ["--config", str(cfg), "--output_dir", str(out),
                                                          "--tokenizer_path", str(tokenizer_dir), "--num_proc", "1"])
    return code, out


def test_prepared_ids_equal_hugging_face_tokenization_under_stripping_special_tokens(toy_tokenizer_dir, tmp_path):
    """Phi-3's role tokens carry rstrip: the shards hold exactly HF's ids of each rendered conversation
    (the newline after <|user|> is swallowed, as HF does). The prepare stage trims message contents."""
    tok = _tokenizer(toy_tokenizer_dir, tmp_path / "phi3_tok", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"],
                     PHI3, rstrip=True)
    code, out = _prepare(tmp_path, tmp_path / "phi3_tok", ROWS)
    assert code == 0
    trimmed = [[{**m, "content": m["content"].strip()} for m in r] for r in ROWS]
    want = sorted(tok(tok.apply_chat_template(r, tokenize=False), add_special_tokens=False)["input_ids"] for r in trimmed)
    got = sorted(e["input_ids"] for e in shard_examples(out, "train"))
    assert got == want
    roles = set(tok.convert_tokens_to_ids(["<|system|>", "<|user|>", "<|assistant|>"]))
    newline = tok.convert_tokens_to_ids("<0x0A>")
    assert all(ids[k + 1] != newline for ids in got for k in range(len(ids) - 1) if ids[k] in roles)


def test_prompts_and_eval_rows_with_surrounding_whitespace_evaluate_under_a_trimming_template(
        toy_tokenizer_dir, tmp_path, capsys):
    """Llama 3's template trims message contents: eval prompts and eval-set rows (prompt and messages forms)
    with leading or trailing whitespace are encoded as the template renders them, and stage 4 evaluates them
    (before, a traceback: the template changed the message text)."""
    from arch_helpers import save_tiny_model

    tok = _tokenizer(toy_tokenizer_dir, tmp_path / "llama3_tok", ["<|start_header_id|>", "<|end_header_id|>",
                                                                  "<|eot_id|>"], LLAMA3, rstrip=False)
    model = save_tiny_model("llama", tok, tmp_path / "model")
    rows = [{"prompt": "  What is 2 plus 3?\n", "reference": "5", "task": "sum"},
            {"messages": [{"role": "system", "content": "\tBe brief. "}, {"role": "user", "content": " Hi "}],
             "reference": "hi ", "task": "greet"},
            {"prompt": "No spaces here", "reference": "ok", "task": "plain"}]
    eval_set = tmp_path / "eval.jsonl"
    eval_set.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    cfg = write_json(tmp_path / "sft.json", {"name": "trim", "training_params": {"max_steps": 1, "micro_batch_tokens": 256},
                                             "evaluation_config": {"eval_prompts": ["  padded prompt  ", "\nnewline"],
                                                                   "generation_config": {"max_new_tokens": 3}}})
    out = tmp_path / "eval"
    code = run_cli(script("04_evaluate_sft").main, [
        "--model_path", str(model), "--tokenizer_path", str(tmp_path / "llama3_tok"), "--template", "tokenizer",
        "--eval_set", str(eval_set), "--config", str(cfg), "--output_dir", str(out), "--max_new_tokens", "3",
        "--no_progress"])
    err = capsys.readouterr().err
    assert code == 0 and "Traceback" not in err, err[-2000:]
    tuned = json.loads((out / "eval_report.json").read_text())["tuned"]
    assert tuned["eval_examples"] == 3 and sorted(tuned["per_family"]) == ["greet", "plain", "sum"]
    assert [s["prompt"] for s in tuned["samples"]] == ["  padded prompt  ", "\nnewline"]
    from utils.data.templates import get_template

    template = get_template("tokenizer", tok)
    for messages in ([{"role": "user", "content": "  padded prompt  "}], rows[1]["messages"]):
        rendered = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert template.encode_prompt(messages) == tok(rendered, add_special_tokens=False)["input_ids"]


def test_a_markdown_transcript_with_an_unclosed_code_fence_is_skipped_naming_the_line(
        toy_tokenizer_dir, tmp_path, capsys):
    """A fence never closed would turn the rest of the file, user lines included, into one assistant turn.
    That file is a counted skip (unclosed_code_fence) whose printed line names the file and the fence's line
    (front matter counted); the well-formed file beside it is prepared as usual."""
    chats = tmp_path / "chats"
    chats.mkdir()
    (chats / "good.md").write_text("**User**: Show a loop\n**GPT**: Here:\n```python\nfor i in range(3):\n"
                                   "    print(i)\n```\n**User**: Thanks\n**GPT**: You are welcome.\n", encoding="utf-8")
    (chats / "broken.md").write_text("---\ntitle: export\n---\n**User**: Show a loop\n**GPT**: Here:\n```python\n"
                                     "for i in range(3):\n**User**: And a secret question\n**GPT**: answer\n",
                                     encoding="utf-8")
    cfg = write_json(tmp_path / "md.json", {
        "name": "md", "template": "chatml", "quality_filters": {"dedupe": False},
        "output_params": {"sequence_length": 512, "train_ratio": 1},
        "datasets": [{"name": "md", "type": "markdown_transcripts", "directories": [str(chats)],
                      "participants": {"user": ["**User**:"], "assistant": ["**GPT**:"]}}]})
    out = tmp_path / "data_md"
    code = run_cli(script("02_prepare_sft_corpus").main, ["--config", str(cfg), "--output_dir", str(out),
                                                          "--tokenizer_path", str(toy_tokenizer_dir), "--num_proc", "1"])
    printed = capsys.readouterr()
    assert code == 0, printed.err[-2000:]
    skipped = [line for line in (printed.out + printed.err).splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "broken.md" in skipped[0] and "unclosed_code_fence" in skipped[0]
    assert "line 6:" in skipped[0] and "never closed" in skipped[0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["sources"]["md"]["skipped_by_reason"] == {"unclosed_code_fence": 1}
    tok = load_tokenizer(toy_tokenizer_dir)
    texts = [tok.decode(e["input_ids"]) for e in shard_examples(out, "train")]
    assert len(texts) == 1 and "welcome" in texts[0] and "secret" not in texts[0]
