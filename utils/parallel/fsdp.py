"""Sharded training with torch's FSDP2 (``fully_shard``): parameters, gradients and optimizer state split over the
ranks, on GPUs (NCCL) and on CPUs (gloo) alike.

The trainer shards the model itself rather than through accelerate's FSDP plugin, so the code that runs on a
GPU cluster is the code the CPU tests run: every decoder layer is one FSDP unit (all-gathered for its forward
and backward, freed after), so are the input embedding and the output head when they do not share a weight;
the rest is the root unit. Precision is as on one
device (fp32 master weights, bf16/fp16 autocast from training_params), and on the CUDA path a bf16 run gathers
its weights in bf16 and reduces gradients in fp32 (``gather_dtype``).

What needs every rank (collectives) is here: the full state dict of the weights (final/, and checkpoints of
unsharded runs) and of the optimizer, both keyed by parameter name; and the sharded checkpoint state of a sharded
run, written with torch.distributed.checkpoint (DCP): each rank writes its own shard of the trainable weights and
of the optimizer state, nothing is gathered, and loading reshards onto any number of ranks (or onto an unsharded
model).
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     get_optimizer_state_dict, get_state_dict, set_model_state_dict,
                                                     set_optimizer_state_dict, set_state_dict)
from torch.distributed.tensor import DTensor

from utils.common.errors import UserError
from utils.model.kernels import cuda_path

SHARDINGS = ("none", "fsdp2")
"""--sharding values: none (one copy of the model per rank: DDP, or one process), fsdp2 (fully_shard)."""


def shard(module: torch.nn.Module, device: torch.device, reshard_after_forward: bool = True,
          param_dtype: torch.dtype | None = None) -> torch.nn.Module:
    """Apply ``fully_shard`` to every decoder layer of ``module``'s model, then to ``module`` (the root). With
    ``param_dtype`` the weights are gathered in it for forward and backward and the gradients reduced in float32
    (``MixedPrecisionPolicy``): half the all-gather traffic, full-precision sums; the shards stay float32."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    _ensure_process_group(device)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),))
    layers = decoder_layers(module)
    if not layers:
        raise UserError("--sharding fsdp2: found no decoder layers to shard in this model (its _no_split_modules "
                        "name none of its modules); train it without --sharding")
    policy = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32) if param_dtype else \
        MixedPrecisionPolicy()
    for unit in layers + _untied_ends(module):
        fully_shard(unit, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    fully_shard(module, mesh=mesh, reshard_after_forward=reshard_after_forward, mp_policy=policy)
    return module


def gather_dtype(params, device: torch.device) -> torch.dtype | None:
    """The dtype sharded weights are gathered in: bf16 for a bf16 run on the CUDA path, else None (as stored,
    float32: on the CPU, and for fp16, whose loss scaling this trainer does not shard)."""
    return torch.bfloat16 if params.bf16 and cuda_path(device) else None


def _untied_ends(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The input embedding and the output head as units of their own when they do not share a weight: the root
    unit (gathered for the whole forward) then holds only the final norm. Tied, they stay in the root."""
    lm = getattr(module, "model", module)
    base = lm.get_base_model() if hasattr(lm, "get_base_model") else lm
    if not hasattr(base, "get_input_embeddings"):
        return []
    embed, head = base.get_input_embeddings(), base.get_output_embeddings()
    if embed is None or head is None or embed.weight is head.weight:
        return []
    return [embed, head]


def decoder_layers(module: torch.nn.Module) -> list[torch.nn.Module]:
    """The transformer blocks, found by the class names transformers lists in ``_no_split_modules``."""
    names: set[str] = set()
    for sub in module.modules():
        names |= set(getattr(sub, "_no_split_modules", None) or ())
    return [sub for sub in module.modules() if type(sub).__name__ in names]


def _ensure_process_group(device: torch.device) -> None:
    """A one-process run gets a process group of its own: fully_shard needs one, even for a world of 1."""
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=dist.HashStore(), rank=0,
                                world_size=1)


def is_sharded(module: torch.nn.Module) -> bool:
    return any(isinstance(p, DTensor) for p in module.parameters())


@contextlib.contextmanager
def gathered(module: torch.nn.Module) -> Iterator[None]:
    """Within the block a sharded ``module``'s own weights (embeddings, final norm, head) stay gathered, so its
    inner model can run outside the root's forward (generation); the decoder layers gather their own."""
    if not hasattr(module, "unshard"):
        yield
        return
    module.unshard()
    try:
        yield
    finally:
        module.reshard()


def set_gradient_sync(module: torch.nn.Module, enabled: bool) -> None:
    """A sharded ``module``'s next backward reduce-scatters its gradients only when ``enabled`` (the last
    micro-batch of a step): accumulation without communication, as DDP's ``no_sync``. Others: nothing."""
    if hasattr(module, "set_requires_gradient_sync"):
        module.set_requires_gradient_sync(enabled)


def local(tensor: torch.Tensor) -> torch.Tensor:
    """This rank's shard of a sharded tensor; a plain tensor as it is."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def full_model_state(module: torch.nn.Module) -> dict:
    """The full weights, gathered: every rank must call it; rank 0 gets them on the CPU, the others {}. A tied
    weight (the output head sharing the embedding) is kept once, under its first name, as an unsharded
    model's save does."""
    state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first = {name for name, _ in module.named_parameters()}
    tied = {name for name, _ in module.named_parameters(remove_duplicate=False)} - first
    return {k: v for k, v in state.items() if k not in tied}


def full_optimizer_state(module: torch.nn.Module, optimizer) -> dict:
    """The full optimizer state keyed by parameter name: every rank must call it; rank 0 gets it, the others {}.
    Unsharded modules (one process, DDP) give the same layout, so any checkpoint resumes on any world size."""
    return get_optimizer_state_dict(module, optimizer, options=StateDictOptions(full_state_dict=True,
                                                                                cpu_offload=True))


def load_optimizer_state(module: torch.nn.Module, optimizer, state: dict) -> None:
    """Put a ``full_optimizer_state`` (read from disk on every rank) into ``optimizer``: each rank keeps its shard."""
    set_optimizer_state_dict(module, optimizer, state, options=StateDictOptions(full_state_dict=True))


_SHARDED = StateDictOptions(ignore_frozen_params=True, strict=False)
"""Sharded checkpoints hold the trainable weights only (a LoRA run's adapter; the frozen base comes from the base
model at resume) and the optimizer state, both keyed by parameter name, so that DCP reshards every tensor on its
own. The optimizer state stays nested (``flatten_optimizer_state_dict`` cannot read back a parameter group left
empty, as LoRA leaves its no-decay group)."""


def save_sharded(module: torch.nn.Module, optimizer, path) -> None:
    """Write ``module``'s trainable weights and ``optimizer``'s state to the DCP directory ``path``, each rank its
    own shards (no gather; rank 0 also writes DCP's ``.metadata``). Every rank must call it."""
    weights, optim = get_state_dict(module, optimizer, options=_SHARDED)
    dcp.save({"model": weights, "optim": optim}, checkpoint_id=str(path))


def load_sharded(module: torch.nn.Module, optimizer, path) -> None:
    """Read a ``save_sharded`` directory into ``module`` and ``optimizer`` (``None``: the weights only), resharded
    onto this run's ranks: sharded or not, any number of them. Every rank must call it."""
    if optimizer is None:
        weights = get_model_state_dict(module, options=_SHARDED)
        dcp.load({"model": weights}, checkpoint_id=str(path))
        set_model_state_dict(module, weights, options=_SHARDED)
        return
    weights, optim = get_state_dict(module, optimizer, options=_SHARDED)
    state = {"model": weights, "optim": optim}
    dcp.load(state, checkpoint_id=str(path))
    set_state_dict(module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                   options=_SHARDED)
