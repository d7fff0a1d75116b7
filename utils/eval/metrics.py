"""Pure metrics of the evaluation stage: scoring answers, text diversity, lengths, differences.

Nothing here touches a model, so every number can be checked on hand-made strings. Text metrics
work on *words*: ``text.casefold().split()`` (whitespace-separated, case folded), so they do not
depend on the tokenizer and compare across models with different vocabularies.
"""
from __future__ import annotations

import math
from collections import defaultdict
from typing import Callable, Sequence


# ---------------------------------------------------------------------- instruction following
def check_answer(task: str, prediction: str, reference: str) -> bool:
    """Exact match after trimming surrounding whitespace.

    ``task`` is taken so a family can get its own rule later without changing callers; today every
    family's answer is a bare string that must match exactly.
    """
    return prediction.strip() == reference.strip()


def is_success(result) -> bool:
    """A usable response: non-empty, and the model stopped by itself (a stop token within max_new_tokens)."""
    return bool(result.finished and result.text.strip())


def score_answers(tasks: Sequence[str], references: Sequence[str], results: Sequence,
                  check: Callable[[str, str, str], bool]) -> dict:
    """Exact match, format compliance and success rate, overall and per task family.

    ``results`` are GenerationResult-like (``text``, ``finished``). A truncated response (no stop
    token) is never correct, whatever its text: a deployed model would not have stopped there.
    Format compliance is the finished rate.
    """
    groups: dict[str, list[tuple[bool, bool, bool]]] = defaultdict(list)
    for task, ref, res in zip(tasks, references, results, strict=True):
        correct = bool(res.finished) and check(task, res.text, ref)
        groups[task].append((correct, bool(res.finished), is_success(res)))
    rows = [row for task in groups for row in groups[task]]
    per_family = {task: _rates(groups[task]) for task in sorted(groups)}
    return {**_rates(rows), "per_family": per_family}


def _rates(rows: list[tuple[bool, bool, bool]]) -> dict:
    n = len(rows)
    mean = lambda k: sum(r[k] for r in rows) / n if n else None  # noqa: E731
    return {"n": n, "exact_match": mean(0), "format_compliance": mean(1), "success_rate": mean(2)}


# ---------------------------------------------------------------------- text diversity and shape
def words(text: str) -> list[str]:
    return text.casefold().split()


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i:i + n]) for i in range(len(tokens) - n + 1)]


def distinct_n(texts: Sequence[str], n: int) -> float | None:
    """Distinct-n (Li et al., 2016): distinct n-grams / all n-grams, pooled over every response.

    1.0 means no n-gram is ever reused; a model that answers everything the same way tends to 0.
    None when the responses hold no n-gram at all.
    """
    grams = [g for text in texts for g in ngrams(words(text), n)]
    return len(set(grams)) / len(grams) if grams else None


def repetition_rate(texts: Sequence[str], n: int = 3) -> float | None:
    """Mean, over responses with at least one n-gram, of the share of n-grams that repeat an earlier
    n-gram of the same response. "a b a b a b" has 3-grams aba bab aba bab: 2 of 4 repeat, 0.5.

    Catches degenerate loops ("the the the ..."); ordinary answers score 0.
    """
    rates = []
    for text in texts:
        grams = ngrams(words(text), n)
        if grams:
            rates.append((len(grams) - len(set(grams))) / len(grams))
    return sum(rates) / len(rates) if rates else None


def prompt_overlap(prompts: Sequence[str], responses: Sequence[str]) -> float | None:
    """Mean, over non-empty responses, of the share of the response's distinct words found in its prompt.

    A crude relevance signal: answers that reuse the prompt's items score high, off-topic text low.
    It rewards copying the prompt and cannot see paraphrase or correctness.
    """
    shares = []
    for prompt, response in zip(prompts, responses, strict=True):
        said = set(words(response))
        if said:
            shares.append(len(said & set(words(prompt))) / len(said))
    return sum(shares) / len(shares) if shares else None


def length_stats(lengths: Sequence[int]) -> dict:
    """Count, mean, median, 90th percentile (linear interpolation) and max of response lengths."""
    if not lengths:
        return {"count": 0, "mean": None, "median": None, "p90": None, "max": None}
    ordered = sorted(lengths)
    return {"count": len(ordered), "mean": sum(ordered) / len(ordered), "median": _quantile(ordered, 0.5),
            "p90": _quantile(ordered, 0.9), "max": ordered[-1]}


def _quantile(ordered: Sequence[int], q: float) -> float:
    pos = q * (len(ordered) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


def text_metrics(prompts: Sequence[str], texts: Sequence[str], lengths: Sequence[int]) -> dict:
    """Every word-level metric of a set of responses (``lengths`` in tokens, the stop token excluded)."""
    return {"distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
            "repetition_3": repetition_rate(texts, 3), "prompt_overlap": prompt_overlap(prompts, texts),
            "response_length": length_stats(lengths)}


# ---------------------------------------------------------------------- side by side
def difference(tuned, base):
    """tuned − base for every number present in both, recursing into dicts; None where either is missing.

    Booleans, strings and lists (samples, settings) have no difference and are left out.
    """
    if isinstance(tuned, dict) and isinstance(base, dict):
        out = {}
        for key in tuned:
            if key in base:
                diff = difference(tuned[key], base[key])
                if diff is not _SKIP:
                    out[key] = diff
        return out
    if _is_number(tuned) and _is_number(base):
        return tuned - base
    if (tuned is None or _is_number(tuned)) and (base is None or _is_number(base)):
        return None
    return _SKIP


_SKIP = object()


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
