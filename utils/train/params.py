"""Training parameters shared by pre-training/CPT and SFT, and what is derived from them."""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from utils.parallel.accelerator import fast_bf16_available

SCHEDULERS = ("cosine", "linear", "constant")
"""Learning-rate decays after warm-up (``lr_lambda``); the schema lists the same names."""
QUANT_TYPES = ("nf4", "fp4")
"""bitsandbytes 4-bit data types; the schema lists the same names."""
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
"""dtypes 4-bit weights are dequantized to for each matmul; the schema lists the same names."""


@dataclass
class TrainingParams:
    """training_params of the pre-training and SFT configs. Each field's docstring is its description:
    config/schemas/common.schema.json repeats it word for word (tests/common/test_config_fields.py)."""

    learning_rate: float = 3e-4
    """Peak learning rate of AdamW."""
    num_train_epochs: float | None = None
    """Passes over the (weighted) training data; ignored when max_steps is set."""
    max_steps: int | None = None
    """Optimizer steps to run; overrides num_train_epochs."""
    per_device_train_batch_size: int | None = None
    """Examples per micro-batch on each device. Set this or micro_batch_tokens."""
    micro_batch_tokens: int | None = None
    """Token budget of one packed micro-batch on each device (padding-free packing). Set this or
    per_device_train_batch_size."""
    gradient_accumulation_steps: int = 1
    """Micro-batches per optimizer step on each device."""
    warmup_steps: int = 0
    """Linear warm-up steps from 0 to learning_rate."""
    scheduler: str = "cosine"
    """Learning-rate decay after warm-up."""
    min_lr_ratio: float = 0.1
    """Final learning rate as a fraction of learning_rate (cosine and linear)."""
    weight_decay: float = 0.0
    """AdamW weight decay (not applied to norms and biases)."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.95
    """AdamW beta2."""
    adam_epsilon: float = 1e-8
    """AdamW epsilon."""
    max_grad_norm: float = 1.0
    """Clip the global gradient norm to this value; 0 disables clipping."""
    save_steps: int = 0
    """Write a full-state checkpoint every N optimizer steps; 0 = only at the end."""
    eval_steps: int = 0
    """Evaluate on the validation split every N steps; 0 = only at the end."""
    logging_steps: int = 10
    """Log metrics every N steps (the only steps that synchronise with the device)."""
    save_total_limit: int | None = 2
    """Keep at most this many checkpoints (oldest deleted first); null keeps all."""
    eval_max_batches: int | None = None
    """Cap on validation micro-batches per evaluation; null = the whole validation split."""
    seed: int = 1234
    """Seed of data order, initialisation and dropout."""
    bf16: bool | str = "auto"
    """bfloat16 autocast; auto = on where bf16 matmul is fast (GPUs with bf16 support, CPUs with
    avx512_bf16 or amx_bf16), off elsewhere (there it is slower than fp32)."""
    fp16: bool = False
    """float16 autocast with loss scaling (GPU only)."""
    attention_fp32: bool | str = "auto"
    """Under bf16 autocast, compute packed attention in float32 (the projections around it stay bf16); auto = on
    for bf16 on the CPU, where PyTorch's float32 attention kernels are the faster ones, off elsewhere."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    load_best_model_at_end: bool = False
    """Publish the checkpoint with the lowest eval/loss as final/ instead of the last step's weights; that
    checkpoint is kept through rotation. Needs eval_steps > 0 and save_steps a multiple of eval_steps."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers that get the metrics besides metrics.jsonl (the transformers convention, through
    accelerate): tensorboard (written to tensorboard/ in the run directory), wandb, mlflow, trackio; [] = none.
    A tracker that is not installed is refused before the run starts."""

    def __post_init__(self) -> None:
        if (self.per_device_train_batch_size is None) == (self.micro_batch_tokens is None):
            raise ValueError("set exactly one of per_device_train_batch_size and micro_batch_tokens")
        if self.bf16 is True and self.fp16:
            raise ValueError("bf16 and fp16 are exclusive")
        if self.bf16 == "auto":
            self.bf16 = not self.fp16 and fast_bf16_available()
        if self.attention_fp32 == "auto":
            self.attention_fp32 = bool(self.bf16) and not torch.cuda.is_available()
        if self.load_best_model_at_end and not (self.eval_steps > 0 and self.save_steps > 0
                                                 and self.save_steps % self.eval_steps == 0):
            raise ValueError("load_best_model_at_end needs eval_steps > 0 and save_steps a multiple of "
                             f"eval_steps (got eval_steps {self.eval_steps}, save_steps {self.save_steps})")

    def micro_batches_per_step(self, world_size: int) -> int:
        """Micro-batches in one optimizer step, over all ranks."""
        return self.gradient_accumulation_steps * world_size

    def mixed_precision(self) -> str:
        """accelerate's name for the precision: "bf16", "fp16" or "no"."""
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "no"

    def autocast_dtype(self) -> torch.dtype | None:
        return torch.bfloat16 if self.bf16 else torch.float16 if self.fp16 else None


@dataclass
class QuantizationParams:
    """quantization of the SFT config: a 4-bit base under the LoRA adapter (QLoRA, bitsandbytes). Each field's
    docstring is its description: config/schemas/sft_training.schema.json repeats it word for word."""

    load_in_4bit: bool = True
    """Hold the base model's linear layers in 4 bits (bitsandbytes Linear4bit) while LoRA trains in full
    precision on top; the only mode (leave the block out, or set it to null, for a full-precision base)."""
    bnb_4bit_quant_type: str = "nf4"
    """4-bit data type: nf4 (NormalFloat, made for normally distributed weights; lower error) or fp4."""
    bnb_4bit_use_double_quant: bool = True
    """Quantize the per-block scales as well (about 0.4 bits less per weight)."""
    bnb_4bit_compute_dtype: str = "float32"
    """dtype the 4-bit weights are dequantized to for each matmul: float32 (exact on every device), or
    bfloat16/float16 (faster on GPUs)."""
    requantize_gguf: bool = False
    """Allow a GGUF base whose weights are already quantized below 8 bits (e.g. Q4_1): its dequantized weights
    are rounded to 4 bits a second time, which costs accuracy (docs/BENCHMARKS.md measures it on SmolLM2-135M);
    without it such a base is refused."""

    def describe(self) -> str:
        """One line for the run plan and the logs."""
        return (f"4-bit {self.bnb_4bit_quant_type}{', double quantization' if self.bnb_4bit_use_double_quant else ''}, "
                f"compute {self.bnb_4bit_compute_dtype}")


def lr_lambda(params: TrainingParams, total_steps: int):
    """Multiplier of the peak learning rate at each step: linear warm-up, then decay."""
    warmup, floor = params.warmup_steps, params.min_lr_ratio

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if params.scheduler == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        if params.scheduler == "linear":
            return floor + (1 - floor) * (1 - progress)
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(model: torch.nn.Module, params: TrainingParams):
    """AdamW (decay on matrices only) and its LambdaLR schedule factory."""
    decay, no_decay = [], []
    for _name, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": params.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    foreach_ok = all(p.device.type in ("cuda", "cpu") for p in decay + no_decay)
    # fused: one kernel per tensor, ~5x faster than foreach on CPU (docs/BENCHMARKS.md); plain tensors only
    fused_ok = foreach_ok and all(p.is_floating_point() and type(p.data) is torch.Tensor for p in decay + no_decay)
    return torch.optim.AdamW(groups, lr=params.learning_rate, betas=(params.adam_beta1, params.adam_beta2),
                             eps=params.adam_epsilon, fused=fused_ok or None,
                             foreach=None if fused_ok else foreach_ok)
