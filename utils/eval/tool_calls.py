"""Tool use on held-out turns: does the model call the right function with the right arguments?

The held-out turns are the val split of the prepared corpora (``--data_dirs``): every supervised assistant turn
whose text holds a tool call, as the data's template wrote it. The prompt is the example's own ids up to where
that turn's supervision starts, which is the conversation so far, the tool definitions included, rendered by the
run's template with the generation prompt: the model sees exactly what training showed it.

A call is read as the project's templates write it, ``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``
(Qwen2.5-style templates put the same JSON between the same tags on lines of its own), each block's JSON normalised
by the data stage's own reader (``utils.data.messages.tool_call``). Per model:

* ``tool_call_parse_rate``: the response stopped by itself and every ``<tool_call>`` block in it is a call;
* ``tool_call_name_match``: and the function names, in order, are the reference's;
* ``tool_call_accuracy``: and each call's arguments equal the reference's as JSON values (object key order
  ignored; ``true`` is not ``1``, ``"5"`` is not ``5``).

A response that does not parse, or that was cut at max_new_tokens, is a miss for all three, never an error.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from utils.common.labels import IGNORE
from utils.data.messages import tool_call
from utils.data.sources import RowProblem
from utils.model.generation import generate_from_ids

BLOCK = re.compile(r"<tool_call>(.*?)</tool_call>", re.S)
OPEN = "<tool_call>"


@dataclass
class ToolCallItem:
    """One held-out assistant turn that calls tools: the prompt's ids and the calls it made."""

    prompt_ids: list[int]
    reference: list[dict]
    """``[{"name": str, "arguments": dict}, ...]`` in the order the turn made them."""
    where: str
    """``<source>#<example>``: the val example the turn comes from."""


def parse_calls(text: str) -> list[dict] | None:
    """The tool calls of a response, ``[{"name", "arguments"}, ...]``; None when it holds none, a block is left
    open, or one block's JSON is not a call (no name, arguments not an object)."""
    blocks = BLOCK.findall(text)
    if not blocks or text.count(OPEN) != len(blocks):
        return None
    calls = []
    for block in blocks:
        try:
            function = tool_call(block.strip(), "tool call")["function"]
        except RowProblem:
            return None
        calls.append({"name": function["name"], "arguments": function["arguments"]})
    return calls


def json_equal(a: Any, b: Any) -> bool:
    """Equal as JSON values: objects whatever their key order, arrays in order, numbers by value, and a boolean
    only equal to the same boolean."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) or isinstance(b, dict):
        return (isinstance(a, dict) and isinstance(b, dict) and a.keys() == b.keys()
                and all(json_equal(a[k], b[k]) for k in a))
    if isinstance(a, list) or isinstance(b, list):
        return (isinstance(a, list) and isinstance(b, list) and len(a) == len(b)
                and all(json_equal(x, y) for x, y in zip(a, b)))
    return _scalar_equal(a, b)


def _scalar_equal(a: Any, b: Any) -> bool:
    numbers = (int, float)
    if isinstance(a, numbers) and isinstance(b, numbers):
        return a == b
    return type(a) is type(b) and a == b


def judge(reference: list[dict], result) -> tuple[bool, bool, bool]:
    """(parsed, names match, names and arguments match) for one generation against its reference calls."""
    calls = parse_calls(result.text) if result.finished else None
    if calls is None:
        return False, False, False
    names = [c["name"] for c in calls] == [c["name"] for c in reference]
    exact = names and all(json_equal(c["arguments"], r["arguments"]) for c, r in zip(calls, reference))
    return True, names, exact


def score_tool_calls(references: Sequence[list[dict]], results: Sequence) -> dict:
    """Parse rate, function-name match and tool-call accuracy over held-out turns (None when there are none)."""
    rows = [judge(ref, res) for ref, res in zip(references, results, strict=True)]
    mean = (lambda k: sum(r[k] for r in rows) / len(rows)) if rows else (lambda k: None)
    return {"tool_call_examples": len(rows), "tool_call_parse_rate": mean(0), "tool_call_name_match": mean(1),
            "tool_call_accuracy": mean(2)}


# ---------------------------------------------------------------------- held-out turns
def _spans(labels: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of each run of supervised positions."""
    mask = np.concatenate([[False], np.asarray(labels) != IGNORE, [False]])
    edges = np.flatnonzero(mask[1:] != mask[:-1])
    return list(zip(edges[::2].tolist(), edges[1::2].tolist()))


def tool_call_items(stores, tokenizer, stop_token_ids: Sequence[int], limit: int | None = None) -> list[ToolCallItem]:
    """Every supervised turn of the val stores that calls tools and ends with a stop token (a turn cut by the
    corpus's sequence_length is left out), the first ``limit``, in store order."""
    stops, items = set(stop_token_ids), []
    for store in stores:
        for i in range(len(store)):
            ids, labels = store.get(i)
            for lo, hi in _spans(labels):
                target = ids[lo:hi].tolist()
                end = next((k for k, t in enumerate(target) if t in stops), None)
                if end is None or lo == 0:
                    continue
                calls = parse_calls(tokenizer.decode(target[:end], skip_special_tokens=True))
                if calls:
                    items.append(ToolCallItem(ids[:lo].tolist(), calls, f"{store.name}#{i}"))
                if limit is not None and len(items) >= limit:
                    return items
    return items


def tool_call_metrics(model, inputs, context) -> tuple[dict, list[dict]]:
    """Generate for every held-out tool-call turn, score the calls; the metrics and one prediction per turn."""
    items = inputs.tool_items
    with context:
        results = generate_from_ids(model, inputs.tokenizer, inputs.template.stop_token_ids,
                                    [item.prompt_ids for item in items], inputs.settings,
                                    batch_size=inputs.batch_size, show_progress=inputs.show_progress)
    metrics = score_tool_calls([item.reference for item in items], results)
    predictions = [{"task": "tool_call", "prompt": item.where, "reference": json.dumps(item.reference),
                    "response": res.text, "finished": res.finished, "num_tokens": res.num_tokens,
                    "correct": judge(item.reference, res)[2]} for item, res in zip(items, results)]
    return metrics, predictions
