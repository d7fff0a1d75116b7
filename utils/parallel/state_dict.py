"""The model inside accelerate's wrapping, and its full state dict gathered across processes."""
from __future__ import annotations

import torch


def unwrap_lm(accelerator, wrapped) -> torch.nn.Module:
    """The causal LM (peft or plain) inside the prepared SupervisedLoss wrapper."""
    return accelerator.unwrap_model(wrapped).model


def lm_state_dict(accelerator, wrapped) -> dict:
    """Full (gathered under FSDP/ZeRO-3) state dict of the LM, keys as the LM names them."""
    return {k.removeprefix("model."): v for k, v in accelerator.get_state_dict(wrapped).items()}
