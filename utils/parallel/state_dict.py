"""The model inside accelerate's (or FSDP2's) wrapping, and the full state of weights and optimizer gathered across
processes: what checkpoints and final/ save, whatever the number of ranks."""
from __future__ import annotations

import torch

from utils.common.errors import UserError
from utils.parallel.fsdp import full_model_state, full_optimizer_state, is_sharded, load_optimizer_state


def unwrap_lm(accelerator, wrapped) -> torch.nn.Module:
    """The causal LM (peft or plain) inside the prepared SupervisedLoss wrapper."""
    return accelerator.unwrap_model(wrapped).model


def lm_state_dict(accelerator, wrapped) -> dict:
    """Full state dict of the LM, keys as the LM names them. Every rank must call it: a sharded model is gathered
    (a collective); the main process gets the weights."""
    state = full_model_state(wrapped) if is_sharded(wrapped) else accelerator.get_state_dict(wrapped)
    return {k.removeprefix("model."): v for k, v in state.items()}


def optimizer_state(wrapped, optimizer) -> dict:
    """The optimizer's full state keyed by parameter name (gathered when sharded: every rank must call it; the
    main process gets it), so that a checkpoint resumes on any number of ranks."""
    return full_optimizer_state(wrapped, optimizer)


def load_optimizer(wrapped, optimizer, state: dict, where: str) -> None:
    """Restore an ``optimizer_state``; a checkpoint from before name-keyed optimizer states (keyed by position)
    loads into an unsharded run only."""
    keys = list(state.get("state", {}))
    if keys and not isinstance(keys[0], str):
        if is_sharded(wrapped):
            raise UserError(f"{where}: this checkpoint's optimizer state is keyed by position (written before "
                            "checkpoints could change world size); resume it without --sharding fsdp2")
        optimizer.load_state_dict(state)
        return
    load_optimizer_state(wrapped, optimizer, state)
