"""How both training stages begin: the ``auto`` switches resolved for this machine, the accelerator, the seed and
the tokenizer; then the model made ready to train (architecture checked, LoRA wrapped, packed attention, gradient
checkpointing)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType, set_seed

from utils.common.errors import UserError
from utils.data.fingerprint import tokenizer_fingerprint
from utils.data.tokenizer import hf_dir_for, load_tokenizer
from utils.model.architectures import check_model, default_lora_targets
from utils.model.attention import use_packed_attention
from utils.model.compiled import compile_layers
from utils.model.kernels import cuda_path
from utils.monitor.trackers import make_trackers
from utils.parallel.accelerator import bf16_support, make_accelerator, run_device
from utils.parallel.fsdp import decoder_layers
from utils.parallel.lora import LoraSettings, apply_lora
from utils.train.cli import RunInputs
from utils.train.config import TrainingParams


@dataclass
class RunStart:
    """What a training stage has once it started, before any data or model is read."""

    accelerator: Accelerator
    """With the trackers of report_to (started later, by the loop)."""
    tokenizer: object
    fingerprint: str
    """sha256 of the tokenizer files (utils/data/fingerprint.py): the prepared data must carry the same."""
    sharding: str = "none"
    """fsdp2 when --sharding asks for it or accelerate was launched with an FSDP config; else none."""
    sharding_from: str = "--sharding"
    reshard_after_forward: bool = True
    """FSDP2: free each layer's gathered weights after its forward (gathered again for backward)."""
    params: TrainingParams | None = None
    """training_params with their auto switches resolved (``resolve_auto``); what the run trains with."""
    resolved_auto: dict = field(default_factory=dict)
    """{field: {"value", "why"}} of the switches that were auto (recorded in the run record, shown in the plan)."""


def start_run(params: TrainingParams, inputs: RunInputs) -> RunStart:
    """The auto switches resolved, the accelerator (with the trackers of report_to), the sharding, the seed, the
    tokenizer and its fingerprint."""
    params, resolved = resolve_auto(params, run_device())
    output_dir = Path(inputs.output_dir)
    trackers = make_trackers(params.report_to, output_dir, output_dir.name)
    accelerator = make_accelerator(params.mixed_precision(), trackers)
    sharding, sharding_from, reshard = _sharding(accelerator, inputs.sharding)
    set_seed(params.seed)
    tokenizer = load_tokenizer(inputs.tokenizer_path)
    return RunStart(accelerator, tokenizer, tokenizer_fingerprint(hf_dir_for(inputs.tokenizer_path)),
                    sharding, sharding_from, reshard, params=params, resolved_auto=resolved)


def resolve_auto(params: TrainingParams, device: torch.device) -> tuple[TrainingParams, dict]:
    """``params`` with the hardware-dependent auto switches (``config.HARDWARE_AUTO``) resolved for ``device``, and
    {field: {"value", "why"}} of each one that was auto. bf16: on where bf16 matmul is fast (``bf16_support``) and
    fp16 is off; attention_fp32: on for bf16 off the CUDA path (PyTorch's float32 CPU attention kernels are the
    faster ones). Explicit values are kept as given."""
    resolved = {}
    bf16 = params.bf16
    if bf16 == "auto":
        fast, why = bf16_support(device)
        bf16 = fast and not params.fp16
        resolved["bf16"] = {"value": bf16, "why": "fp16 is on" if params.fp16 else why}
    fp32 = params.attention_fp32
    if fp32 == "auto":
        on_cuda_path = cuda_path(device)
        fp32 = bool(bf16) and not on_cuda_path
        why = ("bf16 off" if not bf16 else "the CUDA path (bf16 attention kernels)" if on_cuda_path
               else "bf16 on the CPU, where float32 attention kernels are faster")
        resolved["attention_fp32"] = {"value": fp32, "why": why}
    return replace(params, bf16=bf16, attention_fp32=fp32), resolved


def _sharding(accelerator: Accelerator, asked: str) -> tuple[str, str, bool]:
    """(sharding, where it came from, reshard after forward). FSDP from accelerate's launch config is this trainer's
    own FSDP2 (the code the CPU tests run): the plugin settings it does not apply are refused, never ignored.
    DeepSpeed has never run here and is refused."""
    kind = accelerator.distributed_type
    if kind == DistributedType.DEEPSPEED:
        raise UserError("accelerate launch: DeepSpeed is not supported by this trainer; for sharded training launch "
                        "with --config_file config/accelerate/fsdp.yaml (FSDP2), see docs/DISTRIBUTED.md")
    if kind != DistributedType.FSDP:
        return asked, "--sharding", True
    plugin = accelerator.state.fsdp_plugin
    refused = {
        "fsdp_version": plugin.fsdp_version != 2,
        "fsdp_activation_checkpointing (use training_params.gradient_checkpointing)": plugin.activation_checkpointing,
        "fsdp_offload_params": type(plugin.cpu_offload).__name__ == "CPUOffloadPolicy",
        "mixed_precision_policy (training_params.bf16/fp16 set the precision)": not _own_policy(accelerator, plugin)}
    wrong = [name for name, bad in refused.items() if bad]
    if wrong:
        raise UserError(f"accelerate FSDP config: {', '.join(wrong)} — not applied by this trainer's FSDP2; use "
                        "config/accelerate/fsdp.yaml's values (fsdp_version 2, no offload, no activation "
                        "checkpointing, mixed_precision 'no')")
    return "fsdp2", "accelerate config (distributed_type FSDP)", bool(plugin.reshard_after_forward)


def _own_policy(accelerator: Accelerator, plugin) -> bool:
    """Whether the FSDP plugin's mixed-precision policy is none, or the one accelerate derives from the trainer's own
    precision (``Accelerator(mixed_precision="bf16")`` under an FSDP launch sets bf16 gathers and reductions on the
    plugin itself). The trainer shards with its own policy from training_params either way (utils/parallel/fsdp.py)."""
    policy = plugin.mixed_precision_policy
    if policy is None:
        return True
    ours = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)
    return ours is not None and getattr(policy, "param_dtype", None) == ours \
        and getattr(policy, "reduce_dtype", None) in (ours, None)


def ready_to_train(model, lora: LoraSettings | None, params: TrainingParams, where: str):
    """Refuse an architecture that cannot train packed (the start-up check, cached per type); wrap LoRA, targeting
    every linear layer of the model's decoder when ``lora.target_modules`` is left out; switch on packed attention
    and, when asked, gradient checkpointing and torch.compile of every decoder layer. Returns the model and the LoRA
    settings as applied (targets filled in), which the run records, so a resume compares the layers actually
    adapted."""
    check_model(model, where)
    if lora is not None:
        if lora.target_modules is None:
            lora = replace(lora, target_modules=default_lora_targets(model))
        model = apply_lora(model, lora)
    use_packed_attention(model, fp32=bool(params.attention_fp32 and params.bf16))
    if params.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    if params.compile:
        compile_layers(decoder_layers(model))
    return model, lora
