"""Packed, padding-free attention is exact for each supported architecture; other types are refused."""
from __future__ import annotations

import pytest
import torch

from arch_helpers import ARCHITECTURES, tiny_model
from utils.common.errors import UserError
from utils.model.architectures import check_model, check_model_dir
from utils.model.attention import use_packed_attention
from utils.model.modeling import decoder_and_head


def _gguf_header(path, architecture: str):
    import gguf
    import numpy as np

    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_tensor("token_embd.weight", np.zeros((4, 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_a_gguf_of_an_unsupported_architecture_is_refused_from_its_header(tmp_path):
    with pytest.raises(UserError, match=r"bloom\.gguf: model_type 'bloom' cannot train packed: its attention does not go through "):
        check_model_dir(_gguf_header(tmp_path / "bloom.gguf", "bloom"))
    check_model_dir(_gguf_header(tmp_path / "neox.gguf", "gptneox"))  # GGUF's name for gpt_neox: supported
    check_model_dir(_gguf_header(tmp_path / "llama.gguf", "llama"))


@pytest.mark.parametrize("model_type", ("llama",) + ARCHITECTURES)
def test_an_example_packed_with_others_equals_the_example_alone(model_type):
    """Three examples in one row (positions restarting at 0 for each: GPT-2's absolute positions too) give
    the hidden states each gives alone under transformers' own SDPA; Mistral's sliding window (8) is kept
    inside examples longer than it."""
    reference = tiny_model(model_type, 97).eval()
    packed = tiny_model(model_type, 97).eval()
    use_packed_attention(packed)
    assert packed.config._attn_implementation == "packed_varlen"
    reference.set_attn_implementation("sdpa")
    lengths = [5, 19, 12]
    examples = [torch.randint(3, 97, (1, n), generator=torch.Generator().manual_seed(n)) for n in lengths]
    ids = torch.cat(examples, 1)
    positions = torch.cat([torch.arange(n) for n in lengths])[None]
    bounds = torch.tensor([0, 5, 24, 36])
    body, head = decoder_and_head(packed)
    assert head is packed.get_output_embeddings()
    with torch.no_grad():
        hidden = body(input_ids=ids, position_ids=positions, use_cache=False, cu_seq_lens_q=bounds,
                      cu_seq_lens_k=bounds).last_hidden_state
        alone = [decoder_and_head(reference)[0](input_ids=x, use_cache=False).last_hidden_state for x in examples]
        # the same model unpacked (a padded batch of one, so generation's path) matches too
        unpacked = body(input_ids=examples[1], attention_mask=torch.ones_like(examples[1]),
                        use_cache=False).last_hidden_state
    for part, want in zip(hidden.split(lengths, 1), alone):
        torch.testing.assert_close(part, want, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(unpacked, alone[1], atol=1e-5, rtol=1e-5)
    if model_type == "mistral":  # the window matters here: full causal attention would differ
        reference.config.sliding_window = None
        with torch.no_grad():
            full = decoder_and_head(reference)[0](input_ids=examples[1], use_cache=False).last_hidden_state
        assert not torch.allclose(full, alone[1], atol=1e-4)


def test_a_model_type_whose_attention_is_not_the_interface_is_refused(tmp_path):
    from transformers import BloomConfig, BloomForCausalLM

    model = BloomForCausalLM(BloomConfig(vocab_size=50, hidden_size=32, n_layer=1, n_head=4))
    with pytest.raises(UserError) as err:
        check_model(model, "models/bloom")
    assert str(err.value) == ("models/bloom: model_type 'bloom' cannot train packed: its attention does not go "
                              "through transformers' attention interface; this trainer refuses it rather than "
                              "train it wrong (use another base model)")
    model.save_pretrained(tmp_path / "bloom")
    with pytest.raises(UserError, match="model_type 'bloom'"):
        check_model_dir(tmp_path / "bloom")
    check_model_dir(tmp_path / "nothing-here")  # left to the loader, which names it


@pytest.mark.parametrize("model_type", ("llama",) + ARCHITECTURES)
def test_a_left_padded_prompt_generates_as_it_does_alone(model_type):
    """Evaluation generates left-padded batches: a short prompt beside a long one gets the same next-token
    logits at every generated step as alone (GPT-2's absolute positions follow the attention mask)."""
    from utils.model.generation import _left_pad

    model = tiny_model(model_type, 97, pad=0).eval()
    use_packed_attention(model)
    short, long = [5, 6, 7, 8], list(range(10, 40))
    settings = {"max_new_tokens": 5, "do_sample": False, "pad_token_id": 0, "eos_token_id": [2],
                "output_logits": True, "return_dict_in_generate": True, "use_cache": True}
    with torch.no_grad():
        alone = model.generate(input_ids=torch.tensor([short]), attention_mask=torch.ones(1, 4, dtype=torch.long),
                               **settings)
        ids, mask = _left_pad([short, long], 0)
        batch = model.generate(input_ids=ids, attention_mask=mask, **settings)
    assert alone.sequences[0, 4:].tolist() == batch.sequences[0, ids.shape[1]:].tolist()[:alone.sequences.shape[1] - 4]
    for a, b in zip(alone.logits, batch.logits):
        torch.testing.assert_close(a[0], b[0], atol=1e-4, rtol=1e-4)
