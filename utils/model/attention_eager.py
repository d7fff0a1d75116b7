"""What packed attention does with each keyword a model hands the attention interface, and the slower correct path
for the features SDPA cannot express.

A model calls its attention function with keywords for the features of the layer: ``sliding_window`` (a band
the SDPA path draws itself), ``softcap`` (Gemma 2's logit soft-capping: ``tanh(s / cap) * cap`` before the
softmax) and ``s_aux`` (gpt-oss's attention sinks: one extra logit per head). SDPA computes neither of the
last two, so a layer that passes them runs through the model's *own* eager attention (its reference code),
one example of the packed row at a time with that example's causal mask: slower, exact. A keyword this module
does not know, with a value that could change the result, is refused (``UnsupportedAttention``) rather than
dropped: ``utils/model/packing_check.py`` turns that into a one-line refusal of the model type.
"""
from __future__ import annotations

import sys

import torch

SLOW_FEATURES = {"softcap": "logit soft-capping", "s_aux": "attention sinks"}
"""Keywords that send a layer through the model's eager attention per example, and the feature each one is."""

FAST_KEYWORDS = frozenset({
    "sliding_window", "cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k", "position_ids",
    "is_causal", "use_cache", "cache_position", "past_key_values", "layer_idx", "output_attentions",
    "output_hidden_states", "output_router_logits", "return_dict", "seq_idx",
})
"""Keywords the SDPA path reads (bounds, window) or that never change the attention's result."""


class UnsupportedAttention(Exception):
    """A layer asks packed attention for something it cannot compute exactly (one line: the layer and why)."""


def slow_feature(module, kwargs: dict) -> str | None:
    """The feature of this call that needs the eager path per example, None for the SDPA path; raises
    ``UnsupportedAttention`` for a bidirectional layer or a keyword whose meaning is unknown here."""
    if kwargs.get("is_causal", getattr(module, "is_causal", True)) is False:
        raise UnsupportedAttention(f"{_name(module)} attends both ways (is_causal False): packed examples would "
                                   "see each other")
    unknown = sorted(k for k, v in kwargs.items()
                     if k not in FAST_KEYWORDS and k not in SLOW_FEATURES and v is not None and v is not False)
    if unknown:
        raise UnsupportedAttention(f"{_name(module)} passes {', '.join(unknown)} to the attention interface, which "
                                   "packed attention does not know how to apply")
    used = [name for key, name in SLOW_FEATURES.items() if kwargs.get(key) is not None]
    return " and ".join(used) or None


def eager_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The model's own eager attention: per example of a packed row (bounds ``cu_seq_lens_q``), else over the
    batch with its mask (generation, padded batches). [B, H, N, D] in, ([B, N, H, D], None) out."""
    eager = _eager_function(module)
    bounds = kwargs.get("cu_seq_lens_q")
    window = kwargs.get("sliding_window")
    rest = {k: v for k, v in kwargs.items() if k not in ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q",
                                                          "max_length_k")}
    if bounds is None or attention_mask is not None or query.shape[0] != 1:
        mask = additive_mask(attention_mask, query, key, window)
        return eager(module, query, key, value, mask, scaling=scaling, dropout=dropout, **rest)[0], None
    starts = bounds.tolist() if torch.is_tensor(bounds) else list(bounds)
    lengths = [b - a for a, b in zip(starts[:-1], starts[1:]) if b > a]
    outs = [eager(module, q, k, v, additive_mask(None, q, k, window), scaling=scaling, dropout=dropout, **rest)[0]
            for q, k, v in zip(query.split(lengths, 2), key.split(lengths, 2), value.split(lengths, 2))]
    return torch.cat(outs, dim=1), None


def additive_mask(mask, query, key, window) -> torch.Tensor:
    """The float mask eager attention adds to its scores: a boolean mask (True: attend) turned into 0 / -inf-like,
    or, with none, the causal mask (within ``window``) of the last ``q_len`` of ``k_len`` positions."""
    if mask is not None and mask.dtype != torch.bool:
        return mask
    if mask is None:
        q_len, k_len = query.shape[2], key.shape[2]
        rows = torch.arange(q_len, device=query.device)[:, None] + (k_len - q_len)
        cols = torch.arange(k_len, device=query.device)[None, :]
        mask = (cols <= rows) & ((cols > rows - window) if window else True)
        mask = mask[None, None]
    return torch.zeros(mask.shape, dtype=query.dtype, device=query.device).masked_fill(
        ~mask, torch.finfo(query.dtype).min)


def _eager_function(module):
    """The ``eager_attention_forward`` of the module's own modeling file (what transformers runs for "eager")."""
    fn = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if fn is None:
        raise UnsupportedAttention(f"{_name(module)} needs its eager attention for a feature SDPA lacks, but "
                                   f"{type(module).__module__} has no eager_attention_forward")
    return fn


def _name(module) -> str:
    index = getattr(module, "layer_idx", None)
    return f"{type(module).__name__}" + (f" (layer {index})" if index is not None else "")
