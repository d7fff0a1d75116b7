"""The start-up check: a tiny twin of each architecture's config trains one step packed and alone, and the two
agree (losses, the router's auxiliary loss, every gradient, generation); a packed path broken for one feature is
refused naming the layer and the feature; verdicts are cached per type and library versions."""
from __future__ import annotations

import json

import pytest
import torch

from arch_helpers import NEWER_ARCHITECTURES, tiny_config
from utils.common.errors import UserError
from utils.model import attention, loss, packing_check

FEATURES = {
    "qwen3": ["grouped heads", "QK-norm"],
    "qwen3_moe": ["grouped heads", "QK-norm", "MoE routing (4 experts, 2 per token, auxiliary loss)"],
    "gemma2": ["grouped heads", "sliding window", "attention soft-capping", "per-layer window pattern",
               "final soft-capping"],
    "gemma3_text": ["grouped heads", "sliding window", "per-layer window pattern", "QK-norm"],
    "olmo2": ["QK-norm"],
    "smollm3": ["grouped heads", "layers without rotary"],
    "granite": ["grouped heads"],
    "phi": [],
    "starcoder2": ["grouped heads", "sliding window"],
    "mixtral": ["grouped heads", "sliding window", "MoE routing (4 experts, 2 per token, auxiliary loss)"],
}


@pytest.mark.parametrize("model_type", NEWER_ARCHITECTURES)
def test_each_newer_architecture_is_proven_packed_equals_alone(model_type):
    verdict = packing_check.run_check(tiny_config(model_type, 1000))
    assert verdict.ok, verdict.problem
    assert verdict.features == FEATURES[model_type]
    assert verdict.seconds < 30  # "a few seconds": measured 0.1-0.5 s here; a loose bound against a hang


def _config(model_type):
    return tiny_config(model_type, 1000)


def _dropping(monkeypatch, keyword):
    """Packed attention broken for one feature: the layer's ``keyword`` never reaches it."""
    real = attention.packed_sdpa_attention

    def broken(module, query, key, value, mask, *args, **kwargs):
        kwargs.pop(keyword, None)
        return real(module, query, key, value, mask, *args, **kwargs)

    monkeypatch.setattr(attention, "packed_sdpa_attention", broken)


@pytest.mark.parametrize("model_type", ("mistral", "gemma2", "gemma3_text", "starcoder2", "mixtral"))
def test_a_packed_path_that_drops_the_window_is_refused_naming_the_layer(monkeypatch, model_type):
    _dropping(monkeypatch, "sliding_window")
    verdict = packing_check.run_check(_config(model_type))
    assert not verdict.ok
    assert "the loss of each example packed" in verdict.problem
    assert "model.layers.0.self_attn (sliding window 6" in verdict.problem and "differs packed and alone" \
        in verdict.problem


def test_a_packed_path_that_drops_the_soft_cap_is_refused_naming_the_layer(monkeypatch):
    """Gemma 2's cap of 50 is the identity on a random twin's scores: the twin's cap is shrunk until it bites."""
    _dropping(monkeypatch, "softcap")
    verdict = packing_check.run_check(_config("gemma2"))
    assert not verdict.ok
    assert verdict.problem.startswith("the gradients of ")
    assert verdict.problem.endswith("model.layers.0.self_attn (sliding window 6, logit soft-capping 0.002, 4 query "
                                    "heads over 2 key/value heads) differs packed and alone")


@pytest.mark.parametrize("model_type,setting,neutral", (("gemma2", "final_logit_softcapping", None),
                                                        ("granite", "logits_scaling", 1)))
def test_a_loss_that_skips_a_logit_transform_is_refused_naming_the_head(monkeypatch, model_type, setting, neutral):
    real = loss.output_logits

    def skipping(config, logits):
        kept = getattr(config, setting)
        setattr(config, setting, neutral)
        try:
            return real(config, logits)
        finally:
            setattr(config, setting, kept)

    monkeypatch.setattr(loss, "output_logits", skipping)
    verdict = packing_check.run_check(_config(model_type))
    assert not verdict.ok
    assert verdict.problem.startswith("the loss of each example packed")
    assert verdict.problem.endswith("every attention layer agrees: the output head or the layers after the last "
                                    "attention differ")


def test_a_loss_that_gets_the_router_loss_wrong_is_refused(monkeypatch):
    real = loss.router_aux_sum
    monkeypatch.setattr(loss, "router_aux_sum", lambda *args: real(*args) * 1.5)
    verdict = packing_check.run_check(_config("mixtral"))
    assert not verdict.ok
    assert verdict.problem.startswith("the router's auxiliary loss packed")


def test_a_refused_type_is_one_line_and_a_verdict_is_cached_per_versions(tmp_path, monkeypatch):
    from transformers import BloomConfig

    monkeypatch.setenv("SFT_PIPELINE_CACHE", str(tmp_path))
    monkeypatch.setattr(packing_check, "_memo", {})
    with pytest.raises(UserError) as err:
        packing_check.check_packing(BloomConfig(vocab_size=50, hidden_size=32, n_layer=1, n_head=4), "models/b")
    assert str(err.value).startswith("models/b: model_type 'bloom' cannot train packed: its attention does not")
    first = packing_check.check_packing(_config("qwen3"), "models/q")
    assert first.cached == "" and "qwen3: packed == alone" in first.describe()
    saved = json.loads((tmp_path / packing_check.CACHE_FILE).read_text())
    key = packing_check.cache_key(_config("qwen3"))
    assert saved[key]["ok"] and "transformers" in key and "torch" in key
    monkeypatch.setattr(packing_check, "_memo", {})
    monkeypatch.setattr(packing_check, "run_check", lambda config: pytest.fail("checked again"))
    again = packing_check.check_packing(_config("qwen3"), "models/q")
    assert again.cached == str(tmp_path / packing_check.CACHE_FILE) and again.features == first.features


def test_the_moe_loss_reports_the_router_loss_apart():
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(_config("qwen3_moe"))
    attention.use_packed_attention(model)
    module = loss.SupervisedLoss(model, num_sources=1)
    ids = torch.randint(3, 1000, (1, 12))
    positions = torch.cat([torch.arange(5), torch.arange(7)])[None]
    supervised = torch.tensor([1, 2, 3, 6, 7, 8, 9, 10])
    objective, parts = module(ids, positions, supervised, ids[0, supervised + 1], torch.zeros(8, dtype=torch.long),
                              torch.tensor([0, 5, 12], dtype=torch.int32))
    assert parts[-1] > 0 and parts[0] == parts[-2]
    torch.testing.assert_close(objective.detach(), parts[-2] + 0.01 * parts[-1])


def test_the_comparison_takes_a_tolerance_per_quantity_and_reports_the_figures_it_judges():
    theirs = {"losses": torch.tensor([2.0, 4.0]), "aux": torch.zeros(()), "grads": {"w": torch.tensor([1.0, -2.0])}}
    mine = {"losses": torch.tensor([2.0, 4.01]), "aux": torch.zeros(()), "grads": {"w": torch.tensor([1.0, -2.1])}}
    assert packing_check.compare(mine, theirs).startswith("the loss of each example packed")
    assert packing_check.compare(mine, theirs, loss_rtol=5e-3) == (
        "the gradients of 1 weights differ packed and alone (first w)")
    assert packing_check.compare(mine, theirs, loss_rtol=5e-3, grad_rtol=5e-2) is None
    assert packing_check.compare(theirs, theirs) is None
    figures = packing_check.relative_differences(mine, theirs)
    assert figures["loss_rel"] == pytest.approx(0.01 / 4, rel=1e-3) and figures["worst_param"] == "w"
    assert figures["grad_rel"] == pytest.approx(0.1 / 2, rel=1e-3)
