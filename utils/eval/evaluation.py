"""Evaluation of a fine-tuned model, and of a base model beside it, on the same inputs.

``resolve_inputs`` reads everything that does not depend on a model once (tokenizer, template,
validation shards, eval set, eval prompts, retention corpus); ``evaluate_model`` then measures one
model against those inputs, so the tuned and the base model see exactly the same tokens:

* validation loss / perplexity over the prepared val shards: packed, padding-free, no grad, summed
  per source and weighted by supervised tokens (the trainer's own loss, ``utils.model.loss``);
* instruction following on a held-out JSONL of verifiable prompts (exact match, format compliance);
* tool use on the held-out turns of the val shards that call tools (``utils.eval.tool_calls``);
* generation of the config's ``eval_prompts`` (samples to read);
* word-level text metrics of every response (``utils.eval.metrics``);
* response log-likelihood (the coherence measure; see ``response_logprob``);
* domain retention: perplexity on fixed-length windows of a raw-text corpus.
"""
from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from utils.common.errors import UserError
from utils.eval.metrics import check_answer, score_answers, text_metrics
from utils.eval.tool_calls import tool_call_metrics
from utils.model.generation import GenerationSettings, generate_responses
from utils.model.loss import SupervisedLoss, loss_record, loss_sums
from utils.model.probes import copy_probe
from utils.sampling.example_store import ExampleStore, window_store
from utils.sampling.packing import greedy_bins, pack

Conversation = list[dict]


@dataclass
class EvalItem:
    """One held-out prompt with a verifiable answer."""

    messages: Conversation
    reference: str
    task: str


@dataclass
class EvalInputs:
    """Everything a model is measured against; built once, shared by the tuned and the base model."""

    tokenizer: object
    template: object
    settings: GenerationSettings
    val_stores: list[ExampleStore] = field(default_factory=list)
    items: list[EvalItem] = field(default_factory=list)
    prompts: list[Conversation] = field(default_factory=list)
    retention: ExampleStore | None = None
    batch_size: int = 16
    batch_tokens: int = 4096
    precision: str = "fp32"
    device: str = "cpu"
    show_progress: bool = True
    tokenizer_path: str = ""
    fingerprint: str = ""
    data_dirs: list[str] = field(default_factory=list)
    rephrased: list[EvalItem] = field(default_factory=list)
    """The same families asked in wordings training never used (scored apart: exact_match_rephrased)."""
    positions: list[tuple[str, int, str]] = field(default_factory=list)
    """(what, positions it needs, what to change): checked against each model before it is evaluated."""
    tool_items: list = field(default_factory=list)
    """Held-out assistant turns that call tools (``utils.eval.tool_calls.ToolCallItem``), from the val shards."""


@dataclass
class ModelEval:
    """One model's metrics (the JSON report's "tuned"/"base") and what the plots and predictions need."""

    metrics: dict
    predictions: list[dict]
    lengths: list[int]
    timing_s: dict


# ---------------------------------------------------------------------- inputs
def read_eval_set(path: str | Path, limit: int | None = None) -> list[EvalItem]:
    """Rows ``{"messages": [...] | "prompt": "...", "reference": "...", "task": "..."}``, the first ``limit``.

    A trailing assistant turn in ``messages`` is dropped (it would be the answer). A row whose last user turn is
    empty asks nothing: it is skipped and counted in one line (it would score as a wrong answer). A line that is
    not UTF-8 is a one-line error naming it.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as err:
        raise UserError(f"{path}: cannot read the eval set ({err.strerror}); pass a JSONL file to --eval_set") from None
    items, empty = [], 0
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            raise UserError(f"{path}:{number}: not UTF-8 text ({err.reason} at byte {err.start} of the line); "
                            "save the eval set as UTF-8") from None
        if not line.strip():
            continue
        item = _eval_item(line, f"{path}:{number}")
        if not item.messages[-1]["content"].strip():
            empty += 1
            continue
        items.append(item)
        if limit is not None and len(items) >= limit:
            break
    if empty:
        print(f"{path}: skipped {empty} row(s) with an empty prompt (nothing to answer)", flush=True)
    if not items:
        raise UserError(f"{path}: the eval set has no rows with a prompt")
    return items


def _eval_item(line: str, where: str) -> EvalItem:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise UserError(f"{where}: invalid JSON ({err.msg})") from None
    if not isinstance(row, dict) or not isinstance(row.get("reference"), str):
        raise UserError(f"{where}: needs a string field 'reference' (the expected answer)")
    messages = row.get("messages")
    if messages is None and isinstance(row.get("prompt"), str):
        messages = [{"role": "user", "content": row["prompt"]}]
    ok = isinstance(messages, list) and all(
        isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in ("system", "user", "assistant")
        for m in messages)
    if ok and messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not ok or not messages or messages[-1]["role"] != "user":
        raise UserError(f"{where}: needs 'prompt' (a string) or 'messages' (role/content dicts ending "
                        "with a user turn)")
    return EvalItem([{"role": m["role"], "content": m["content"]} for m in messages], row["reference"],
                    str(row.get("task") or "all"))


def prompt_conversations(prompts: list[str], system_prompt: str | None) -> list[Conversation]:
    """The config's eval prompts as the trainer's sampler builds them."""
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [system + [{"role": "user", "content": p}] for p in prompts]


def retention_store(documents, tokenizer, max_tokens: int, window: int) -> ExampleStore:
    """Windows of ``window`` tokens over the documents (each followed by eos, as in pre-training)."""
    stream: list[int] = []
    for doc in documents:
        ids = tokenizer(doc, add_special_tokens=False, split_special_tokens=True)["input_ids"]
        stream += ids + [tokenizer.eos_token_id]
        if len(stream) >= max_tokens:
            break
    stream = stream[:max_tokens]
    if len(stream) < 2:
        raise UserError("--retention_corpus: no text found in it; pass .txt/.md files, a directory of them, "
                        "or a JSONL file with a text field")
    return window_store("retention", np.asarray(stream, dtype=np.int32), min(window, len(stream)))


# ---------------------------------------------------------------------- model side
def precision_context(inputs: EvalInputs):
    if inputs.precision == "bf16":
        return torch.autocast(torch.device(inputs.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def example_loss_sums(model, examples: list[tuple[np.ndarray, np.ndarray, int]], num_sources: int,
                      inputs: EvalInputs, desc: str) -> tuple[list[float], list[float]]:
    """Summed next-token loss and supervised-target count per source over (ids, labels, source) examples,
    by the training loop's own routine (``utils.model.loss.loss_sums``)."""
    bins = greedy_bins([len(e[0]) for e in examples], inputs.batch_tokens)  # the trainer's validation packer
    batches = (pack([examples[i] for i in group]) for group in tqdm(list(bins), desc=desc,
                                                                     disable=not inputs.show_progress))
    sums, counts = loss_sums(SupervisedLoss(model, num_sources), batches, num_sources, inputs.device,
                             lambda: precision_context(inputs))
    return sums.tolist(), counts.tolist()


def _store_examples(stores: list[ExampleStore]) -> list[tuple[np.ndarray, np.ndarray, int]]:
    return [(*store.get(i), s) for s, store in enumerate(stores) for i in range(len(store))]


def val_metrics(model, inputs: EvalInputs) -> dict:
    """Token-weighted validation loss/perplexity over the val shards, overall and per source."""
    stores = inputs.val_stores
    sums, counts = example_loss_sums(model, _store_examples(stores), len(stores), inputs, "validation loss")
    return loss_record([s.name for s in stores], sums, counts)


def retention_metrics(model, inputs: EvalInputs) -> dict:
    sums, counts = example_loss_sums(model, _store_examples([inputs.retention]), 1, inputs, "retention")
    return loss_record(["retention"], sums, counts)


def response_logprob(model, inputs: EvalInputs, conversations: list[Conversation], results) -> float | None:
    """The coherence measure: mean log-likelihood per token of the model's own finished responses.

    Each finished, non-empty response is put back as the final assistant turn and encoded with the
    training template (``train_on=last_assistant_turn``), so exactly the response text and its
    end-of-turn token are scored, conditioned on the prompt, by the same loss as validation. Higher
    (closer to 0) means the model finds its answer fluent and consistent with the prompt. Limits: it
    measures the model's confidence, not truth; greedy decoding favours high values; loops can score
    well (see repetition_3); the text is re-tokenized, which may differ slightly from the sampled ids;
    values compare across models only when they share a tokenizer.
    """
    examples = []
    for conv, res in zip(conversations, results):
        if res.finished and res.text.strip():
            try:
                enc = inputs.template.encode(conv + [{"role": "assistant", "content": res.text}],
                                             train_on="last_assistant_turn")
            except ValueError:
                continue
            examples.append((np.asarray(enc.input_ids), np.asarray(enc.labels), 0))
    if not examples:
        return None
    sums, counts = example_loss_sums(model, examples, 1, inputs, "response log-likelihood")
    return -sums[0] / counts[0] if counts[0] else None


def generation_metrics(model, inputs: EvalInputs) -> tuple[dict, list[dict], list[int]]:
    """Generate for the eval set and the eval prompts in one batched pass; score and describe the answers."""
    scored = inputs.items + inputs.rephrased
    conversations = [item.messages for item in scored] + inputs.prompts
    if not conversations:
        return {}, [], []
    with precision_context(inputs):
        results = generate_responses(model, inputs.tokenizer, inputs.template, conversations, inputs.settings,
                                     batch_size=inputs.batch_size, show_progress=inputs.show_progress)
    answers, rephrased = results[:len(inputs.items)], results[len(inputs.items):len(scored)]
    samples = results[len(scored):]
    metrics = {}
    if inputs.items:
        scores = score_answers([i.task for i in inputs.items], [i.reference for i in inputs.items],
                               answers, check_answer)
        metrics["eval_examples"] = scores.pop("n")
        metrics.update(scores)
    if inputs.rephrased:
        scores = score_answers([i.task for i in inputs.rephrased], [i.reference for i in inputs.rephrased],
                               rephrased, check_answer)
        metrics.update(exact_match_rephrased=scores["exact_match"], per_family_rephrased=scores["per_family"])
    lengths = [r.num_tokens - int(r.finished) for r in results]
    last_user = [next(m["content"] for m in reversed(c) if m["role"] == "user") for c in conversations]
    metrics.update(text_metrics(last_user, [r.text for r in results], lengths))
    metrics["response_logprob"] = response_logprob(model, inputs, conversations, results)
    metrics["samples"] = [{"prompt": c[-1]["content"], "response": r.text, "finished": r.finished}
                          for c, r in zip(inputs.prompts, samples)]
    predictions = [{"task": i.task, "prompt": i.messages[-1]["content"], "reference": i.reference,
                    "response": r.text, "finished": r.finished, "num_tokens": r.num_tokens,
                    "correct": bool(r.finished) and check_answer(i.task, r.text, i.reference)}
                   for i, r in zip(inputs.items, answers)]
    return metrics, predictions, lengths


SCALARS = ("val_loss", "val_ppl", "exact_match", "exact_match_rephrased", "format_compliance", "success_rate",
           "tool_call_parse_rate", "tool_call_name_match", "tool_call_accuracy", "retention_loss", "retention_ppl",
           "copy_loss_first", "copy_loss_second", "distinct_1", "distinct_2", "repetition_3", "prompt_overlap",
           "response_logprob")
"""The flat per-model keys every report has (None where the input for it was not given)."""


def evaluate_model(model, inputs: EvalInputs) -> ModelEval:
    """Every metric of one model (put in eval mode, no grad) on ``inputs``."""
    model.eval()
    metrics: dict = dict.fromkeys(SCALARS + ("eval_examples", "tool_call_examples"))
    timing = {}
    start = time.perf_counter()
    if inputs.val_stores:
        val = val_metrics(model, inputs)
        metrics.update(val_loss=val["loss"], val_ppl=val["ppl"], val_tokens=val["tokens"],
                       val_per_source=val["per_source"])
        timing["validation"] = time.perf_counter() - start
    start = time.perf_counter()
    generated, predictions, lengths = generation_metrics(model, inputs)
    metrics.update(generated)
    timing["generation"] = time.perf_counter() - start
    if inputs.tool_items:
        start = time.perf_counter()
        tools, tool_predictions = tool_call_metrics(model, inputs, precision_context(inputs))
        metrics.update(tools)
        predictions += tool_predictions
        timing["tool_calls"] = time.perf_counter() - start
    if inputs.retention is not None:
        start = time.perf_counter()
        kept = retention_metrics(model, inputs)
        metrics.update(retention_loss=kept["loss"], retention_ppl=kept["ppl"], retention_tokens=kept["tokens"])
        timing["retention"] = time.perf_counter() - start
    with precision_context(inputs):
        probe = copy_probe(model, inputs.tokenizer)
    metrics.update(copy_loss_first=probe.first_loss, copy_loss_second=probe.second_loss)
    return ModelEval(metrics, predictions, lengths, timing)
