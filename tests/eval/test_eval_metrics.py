"""Pure evaluation metrics on hand-made strings and fake generations."""
from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from utils.common.labels import perplexity
from utils.eval.metrics import (check_answer, difference, distinct_n, is_success, length_stats, prompt_overlap,
                                repetition_rate, score_answers)
from utils.model.loss import loss_record


def result(text: str, finished: bool = True):
    return SimpleNamespace(text=text, finished=finished, num_tokens=len(text.split()) + int(finished))


def test_distinct_n_pools_all_responses():
    texts = ["a b c", "A b d"]  # case folded: a b c a b d
    assert distinct_n(texts, 1) == pytest.approx(4 / 6)
    assert distinct_n(texts, 2) == pytest.approx(3 / 4)  # ab bc ab bd
    assert distinct_n(["same same"], 1) == 0.5
    assert distinct_n(["", "one"], 2) is None


def test_repetition_rate_counts_repeated_trigrams_per_response():
    assert repetition_rate(["a b a b a b"]) == pytest.approx(0.5)  # aba bab aba bab
    assert repetition_rate(["the cat sat on the mat"]) == 0.0
    assert repetition_rate(["x x x x x"]) == pytest.approx(2 / 3)  # xxx xxx xxx
    assert repetition_rate(["a b a b a b", "a b c d", "too short"]) == pytest.approx(0.25)
    assert repetition_rate(["", "a b"]) is None


def test_length_stats_match_numpy():
    lengths = [3, 1, 4, 1, 5, 9, 2, 6, 5, 3]
    stats = length_stats(lengths)
    assert stats["count"] == 10 and stats["max"] == 9
    assert stats["mean"] == pytest.approx(np.mean(lengths))
    assert stats["median"] == pytest.approx(np.median(lengths))
    assert stats["p90"] == pytest.approx(np.percentile(lengths, 90))
    assert length_stats([])["mean"] is None


def test_prompt_overlap():
    assert prompt_overlap(["Reverse [a, b]", "Say hi"], ["b a", "bye"]) == pytest.approx(0.0 + 0.0)
    assert prompt_overlap(["uppercase: python now"], ["python now"]) == 1.0
    assert prompt_overlap(["one two"], ["two three"]) == 0.5
    assert prompt_overlap(["x"], [""]) is None


def test_always_correct_stub_scores_100_percent():
    refs = ["4", "c,b,a", "HELLO"]
    tasks = ["add", "reverse_list", "uppercase"]
    scores = score_answers(tasks, refs, [result(f" {r} ") for r in refs], check_answer)
    assert scores["exact_match"] == scores["format_compliance"] == scores["success_rate"] == 1.0
    assert scores["n"] == 3
    assert set(scores["per_family"]) == set(tasks)


def test_truncated_response_is_a_failure_even_when_its_text_matches():
    scores = score_answers(["add", "add"], ["4", "5"], [result("4", finished=False), result("5")], check_answer)
    assert scores["exact_match"] == 0.5
    assert scores["format_compliance"] == 0.5
    assert not is_success(result("4", finished=False))
    assert not is_success(result("   ", finished=True))  # empty is not a success either


def test_per_family_rates():
    tasks = ["add", "add", "add", "upper"]
    refs = ["1", "2", "3", "A"]
    results = [result("1"), result("x"), result("3", finished=False), result("A")]
    scores = score_answers(tasks, refs, results, check_answer)
    assert scores["per_family"]["add"] == {"n": 3, "exact_match": pytest.approx(1 / 3),
                                           "format_compliance": pytest.approx(2 / 3),
                                           "success_rate": pytest.approx(2 / 3)}
    assert scores["per_family"]["upper"]["exact_match"] == 1.0
    assert scores["exact_match"] == 0.5


def test_perplexity_is_exp_loss_and_loss_is_token_weighted():
    assert perplexity(2.0) == pytest.approx(math.exp(2.0))
    assert perplexity(None) is None
    assert math.isfinite(perplexity(1e6))  # capped, never Infinity in JSON
    record = loss_record(["a", "b", "empty"], [2.0, 6.0, 0.0], [2, 3, 0])
    assert record["loss"] == pytest.approx(8 / 5)  # not the mean of per-source means (1.0, 2.0)
    assert record["ppl"] == pytest.approx(math.exp(8 / 5))
    assert record["tokens"] == 5
    assert record["per_source"] == {"a": {"loss": 1.0, "ppl": pytest.approx(math.e), "tokens": 2},
                                    "b": {"loss": 2.0, "ppl": pytest.approx(math.e ** 2), "tokens": 3}}


def test_difference_is_tuned_minus_base_for_numbers_only():
    tuned = {"val_loss": 1.5, "exact_match": 0.75, "n": 10, "flag": True, "samples": [1], "name": "x",
             "retention_ppl": None, "per_family": {"add": {"exact_match": 1.0}, "only_tuned": {"exact_match": 1}}}
    base = {"val_loss": 2.0, "exact_match": 0.25, "n": 10, "flag": False, "samples": [2], "name": "y",
            "retention_ppl": 3.0, "per_family": {"add": {"exact_match": 0.5}}}
    assert difference(tuned, base) == {"val_loss": -0.5, "exact_match": 0.5, "n": 0, "retention_ppl": None,
                                       "per_family": {"add": {"exact_match": 0.5}}}
