"""LoRA wrapping: only the adapter trains, GPT-2's Conv1D layers are wrapped the right way round, and a target
that the model lacks is one line naming the layers it has."""
from __future__ import annotations

import pytest
import torch

from train_helpers import tiny_llama
from utils.common.errors import UserError
from utils.parallel.lora import LoraSettings, apply_lora


def test_only_the_adapter_trains_and_it_starts_as_the_identity():
    base = tiny_llama()
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        before = base(input_ids=ids).logits.clone()
    model = apply_lora(base, LoraSettings(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=["q_proj", "v_proj"]))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    assert {n.split(".")[-4] for n in trainable} == {"q_proj", "v_proj"}
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, before)  # lora_B starts at zero


def test_a_missing_target_names_the_layers_the_model_has():
    with pytest.raises(UserError) as err:
        apply_lora(tiny_llama(), LoraSettings(target_modules=["c_attn"]))
    message = str(err.value)
    assert message.startswith("lora_config.target_modules: ['c_attn'] not found in the model")
    assert "q_proj" in message and "lm_head" not in message


def test_gpt2_conv1d_layers_are_wrapped_fan_in_fan_out():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_embd=16, n_layer=1, n_head=2, n_positions=32))
    adapted = apply_lora(model, LoraSettings(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["c_attn"]))
    assert adapted.peft_config["default"].fan_in_fan_out is True
    ids = torch.tensor([[1, 2, 3]])
    with torch.no_grad():
        assert adapted(input_ids=ids).logits.shape == (1, 3, 64)
