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


def test_a_packed_path_that_drops_the_window_is_refused_naming_the_layer(monkeypatch):
    real = attention.packed_sdpa_attention

    def no_window(module, query, key, value, mask, *args, **kwargs):
        kwargs.pop("sliding_window", None)
        return real(module, query, key, value, mask, *args, **kwargs)

    monkeypatch.setattr(attention, "packed_sdpa_attention", no_window)
    verdict = packing_check.run_check(_config("mistral"))
    assert not verdict.ok
    assert "the loss of each example packed" in verdict.problem
    assert "model.layers.0.self_attn (sliding window 6, 4 query heads over 2 key/value heads) differs" \
        in verdict.problem


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
