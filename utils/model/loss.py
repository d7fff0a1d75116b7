"""The loss: cross-entropy summed over supervised positions only.

Only the hidden states of supervised positions go through the output head, in chunks,
so the [tokens x vocab] logits of prompt tokens are never built. The module returns a
SUM; the training loop divides by the supervised tokens of the whole optimizer step. The logits are
transformed as the model's own forward does (soft-capping, logit scales), and an MoE model's router adds its
load-balancing loss, per example.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterable, NamedTuple, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from utils.common.labels import perplexity
from utils.model.attention import bounds_mask, uses_packed_attention
from utils.model.modeling import decoder_and_head

CHUNK_ROWS = 4096


class SupervisedLoss(torch.nn.Module):
    """Wraps a causal LM so that DDP/FSDP see one forward: packed batch in, (objective sum, parts) out.

    ``parts`` holds the per-source loss sums (``num_sources``), then the loss sum and the router's auxiliary
    loss sum (0 without a router): what the loop logs apart. The objective is the loss sum plus, for an MoE
    model, ``router_aux_loss_coef`` times the auxiliary loss of each example weighted by its supervised tokens.
    """

    def __init__(self, model: torch.nn.Module, num_sources: int = 1):
        super().__init__()
        self.model = model
        self.num_sources = num_sources
        self.router = router_of(model)

    def forward(self, input_ids, position_ids, supervised, targets, sources, cu_seq_lens=None):
        """``supervised``: the positions of the row with a target, ``targets`` and ``sources`` theirs (the packer
        finds them on the host: a boolean mask here would make a GPU's host wait for its count)."""
        body, head = decoder_and_head(self.model)
        mask = bounds_mask(input_ids.device) if cu_seq_lens is not None and uses_packed_attention(body) else None
        routed = {"output_router_logits": True} if self.router else {}
        out = body(input_ids=input_ids, position_ids=position_ids, attention_mask=mask, use_cache=False,
                   cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens, **routed)
        hidden = out.last_hidden_state.flatten(0, 1).index_select(0, supervised)
        config = self.model.config
        per_token = []
        for start in range(0, targets.numel(), CHUNK_ROWS):
            logits = output_logits(config, head(hidden[start:start + CHUNK_ROWS]).float())
            per_token.append(F.cross_entropy(logits, targets[start:start + CHUNK_ROWS], reduction="none"))
        losses = torch.cat(per_token) if per_token else hidden.new_zeros(0, dtype=torch.float32)
        parts = torch.zeros(self.num_sources + 2, dtype=torch.float32, device=losses.device)
        parts.index_add_(0, sources, losses.detach())
        # sum() of an empty tensor keeps the graph connected, so DDP sees every parameter used
        objective = losses.sum() + 0.0 * hidden.sum()
        parts[-2] = objective.detach()
        if self.router:
            aux = router_aux_sum(out.router_logits, position_ids, supervised, self.router)
            objective = objective + self.router.coef * aux
            parts[-1] = aux.detach()
        return objective, parts


def output_logits(config, logits: torch.Tensor) -> torch.Tensor:
    """What the model's own forward makes of its head's output: Gemma 2/3's final soft-capping, Cohere's
    ``logit_scale``, Granite's ``logits_scaling`` (utils/model/packing_check.py proves no other transform is
    missed)."""
    cap = getattr(config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    scale = getattr(config, "logit_scale", None)
    if isinstance(scale, (int, float)) and getattr(config, "model_type", "").startswith("cohere"):
        logits = logits * scale
    divisor = getattr(config, "logits_scaling", None)
    if isinstance(divisor, (int, float)) and divisor != 1:
        logits = logits / divisor
    return logits


class Router(NamedTuple):
    """An MoE model's router settings, as its own forward reads them for the load-balancing loss."""

    num_experts: int
    top_k: int
    coef: float


def router_of(model) -> Router | None:
    """The router settings of an MoE causal LM (peft-wrapped or not) with a load-balancing loss, else None."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    values = [getattr(base, name, None) for name in ("num_experts", "num_experts_per_tok", "router_aux_loss_coef")]
    if not all(isinstance(v, (int, float)) for v in values) or not values[2]:
        return None
    return Router(int(values[0]), int(values[1]), float(values[2]))


def router_aux_sum(router_logits, position_ids, supervised, router: Router) -> torch.Tensor:
    """Sum over the examples of a packed row of (supervised tokens x load-balancing loss of the example).

    The loss of one example is transformers' ``load_balancing_loss_func`` on that example alone (experts x
    the sum over experts of the share of its tokens routed there times its mean router probability, over every
    MoE layer), so packing and the split of a step into micro-batches do not change it. Examples are told
    apart by their positions restarting at 0 (no host sync)."""
    segment = (position_ids[0] == 0).long().cumsum(0) - 1
    count = int(position_ids.shape[1])
    examples = torch.zeros_like(segment).index_add_(0, segment, torch.ones_like(segment))
    routed = torch.zeros(count, router.num_experts, device=segment.device)
    probs = torch.zeros_like(routed)
    for layer in router_logits:
        weights = torch.softmax(layer.reshape(count, -1).float(), dim=-1)
        chosen = torch.topk(weights, router.top_k, dim=-1).indices
        routed = routed + F.one_hot(chosen, router.num_experts).sum(1).float()
        probs = probs + weights
    per_example = torch.zeros(count, router.num_experts, device=segment.device)
    shares = per_example.index_add(0, segment, routed) * per_example.index_add(0, segment, probs)
    tokens = (examples.float() * len(router_logits)).clamp(min=1)[:, None]
    aux = router.num_experts * (shares / tokens ** 2).sum(-1)
    counts = torch.zeros(count, device=segment.device).index_add_(
        0, segment.index_select(0, supervised), torch.ones(supervised.shape, device=segment.device))
    return (counts * aux).sum()


@torch.no_grad()
def loss_sums(loss_module: SupervisedLoss, batches: Iterable, num_sources: int, device,
              autocast: Callable[[], contextlib.AbstractContextManager]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed loss and supervised-target count per source over packed batches: the one validation loss.

    Training (each rank its share, then reduced) and evaluation both call it. The sums are float32 on
    ``device``, as the per-batch sums are, so the numbers do not depend on where the model runs; the counts
    are made on the host, where the packer knows them.
    """
    sums = torch.zeros(num_sources, device=device)
    counts = np.zeros(num_sources, dtype=np.int64)
    for batch in batches:
        counts += batch.supervised_per_source(num_sources)
        with autocast():
            _, by_source = loss_module(*batch.to(device).loss_inputs())
        sums += by_source[:num_sources]
    return sums, torch.from_numpy(counts).float().to(device)


def loss_record(names: Sequence[str], sums: Sequence[float], counts: Sequence[float]) -> dict:
    """Token-weighted loss and perplexity, overall and per named part (e.g. per data source), from the sums and
    target counts of ``loss_sums``: the validation record of the training loop and of evaluation."""
    per_part = {name: {"loss": s / n, "ppl": perplexity(s / n), "tokens": int(n)}
                for name, s, n in zip(names, sums, counts) if n}
    total, tokens = float(sum(sums)), float(sum(counts))
    loss = total / tokens if tokens else None
    return {"loss": loss, "ppl": perplexity(loss), "tokens": int(tokens), "per_source": per_part}
