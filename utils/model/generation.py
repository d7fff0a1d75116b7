"""Batched generation with a KV cache, prompts rendered by the same chat template as training.

A response is "finished" when the model emitted one of the template's stop tokens
(end-of-turn or eos) within ``max_new_tokens``; the text is what came before it.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm import tqdm

from utils.common.config_schema import setting


@dataclass(frozen=True)
class GenerationSettings:
    """How responses are sampled (the ``generation_config`` of an SFT training config)."""

    max_new_tokens: int = setting(64, minimum=1)
    """Longest response in tokens."""
    temperature: float = setting(0.0, minimum=0)
    """0 = greedy decoding."""
    top_p: float = setting(1.0, exclusiveMinimum=0, maximum=1)
    """Nucleus sampling mass (when temperature > 0)."""
    seed: int = setting(1234, minimum=0)
    """Seed of sampling, so samples are reproducible."""


@dataclass
class GenerationResult:
    text: str
    finished: bool          # ended with a stop token within max_new_tokens
    num_tokens: int         # generated tokens, the stop token included


def _left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def _cut(tokens: list[int], stop_ids: set[int], pad_id: int) -> tuple[list[int], bool, int]:
    for k, tok in enumerate(tokens):
        if tok in stop_ids:
            return tokens[:k], True, k + 1
    return [t for t in tokens if t != pad_id], False, len(tokens)


@torch.no_grad()
def generate_responses(model, tokenizer, template, conversations: list[list[dict]], settings,
                       batch_size: int = 16, show_progress: bool = False) -> list[GenerationResult]:
    """Responses to conversations (each ending with a user turn), in order; deterministic per seed."""
    prompts = [template.encode_prompt(c) for c in conversations]
    return generate_from_ids(model, tokenizer, template.stop_token_ids, prompts, settings, batch_size, show_progress)


@torch.no_grad()
def generate_from_ids(model, tokenizer, stop_token_ids, prompts: list[list[int]], settings, batch_size: int = 16,
                      show_progress: bool = False) -> list[GenerationResult]:
    """Responses to prompts already encoded (each ending with the assistant header), in order."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    stop_ids = set(stop_token_ids)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))  # similar lengths pad less
    results: dict[int, GenerationResult] = {}
    sample = settings.temperature > 0
    bar = tqdm(total=len(prompts), desc="generating", disable=not show_progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        ids, mask = _left_pad([prompts[i] for i in chunk], tokenizer.pad_token_id)
        torch.manual_seed(settings.seed + start)
        out = model.generate(
            input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=settings.max_new_tokens,
            do_sample=sample, temperature=settings.temperature if sample else None,
            top_p=settings.top_p if sample else None, top_k=None, eos_token_id=sorted(stop_ids),
            pad_token_id=tokenizer.pad_token_id, use_cache=True)
        for row, index in enumerate(chunk):
            new = out[row, ids.shape[1]:].tolist()
            kept, finished, count = _cut(new, stop_ids, tokenizer.pad_token_id)
            text = tokenizer.decode(kept, skip_special_tokens=True).strip()
            results[index] = GenerationResult(text, finished, count)
        bar.update(len(chunk))
    bar.close()
    model.train(was_training)
    return [results[i] for i in range(len(prompts))]
