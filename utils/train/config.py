"""The training configs as typed dataclasses: config/pretrain/*.json and config/sft_training/*.json.

Each dataclass is what the code uses; config/schemas/ say what JSON is allowed (tests/common/test_config_fields.py
holds the two together field by field). Evaluation, the studio and the benchmarks read a run's saved config
through these types without importing a training stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from utils.data.pretrain_data import PretrainData
from utils.model.generation import GenerationSettings
from utils.model.kernels import cuda_path
from utils.model.modeling import ModelArchitecture
from utils.parallel.accelerator import fast_bf16_available
from utils.parallel.lora import LoraSettings

SCHEDULERS = ("cosine", "linear", "constant")
"""Learning-rate decays after warm-up (``optim.lr_lambda``); the schema lists the same names."""
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
    fold_micro_batches: bool | str = "auto"
    """Run the micro-batches of a step as fewer, larger ones (gradient_accumulation_steps divided and
    micro_batch_tokens multiplied by the largest factor the free device memory holds, by an estimate; the tokens
    per step stay); auto = on for the CUDA path, off on the CPU. The split is recorded in each checkpoint and kept
    on resume."""
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
    for bf16 on the CPU, where PyTorch's float32 attention kernels are the faster ones, off elsewhere (and under
    SFT_EMULATE_CUDA_KERNELS, which runs the CUDA path on the CPU)."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward to save memory."""
    compile: bool = False
    """Compile every decoder layer with torch.compile (inductor; packed attention stays eager): the first steps
    compile (about a minute), later lengths reuse the graphs; the run says at its end how many it compiled."""
    load_best_model_at_end: bool = False
    """Publish the checkpoint with the lowest eval/loss as final/ instead of the last step's weights; that
    checkpoint is kept through rotation. Needs eval_steps > 0 and save_steps a multiple of eval_steps."""
    report_to: list[str] = field(default_factory=lambda: ["tensorboard"])
    """Experiment trackers that get the metrics besides metrics.jsonl (the transformers convention, through
    accelerate): tensorboard (written to tensorboard/ in the run directory), wandb, mlflow, trackio; [] = none.
    A tracker that is not installed is refused before the run starts."""
    dataloader_pin_memory: bool = True
    """Copy each micro-batch to the GPU from pinned (page-locked) host memory, so the copy overlaps the
    previous step's work; on a CPU nothing is copied and the setting is ignored (said in the run plan)."""

    def __post_init__(self) -> None:
        if (self.per_device_train_batch_size is None) == (self.micro_batch_tokens is None):
            raise ValueError("set exactly one of per_device_train_batch_size and micro_batch_tokens")
        if self.bf16 is True and self.fp16:
            raise ValueError("bf16 and fp16 are exclusive")
        if self.bf16 == "auto":
            self.bf16 = not self.fp16 and fast_bf16_available()
        if self.attention_fp32 == "auto":
            self.attention_fp32 = bool(self.bf16) and not cuda_path("cuda" if torch.cuda.is_available() else "cpu")
        if self.load_best_model_at_end and not (self.eval_steps > 0 and self.save_steps > 0
                                                 and self.save_steps % self.eval_steps == 0):
            raise ValueError("load_best_model_at_end needs eval_steps > 0 and save_steps a multiple of "
                             f"eval_steps (got eval_steps {self.eval_steps}, save_steps {self.save_steps})")

    def mixed_precision(self) -> str:
        """accelerate's name for the precision: "bf16", "fp16" or "no"."""
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "no"


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


@dataclass
class EvaluationConfig:
    """evaluation_config of the SFT config: prompts sampled at each evaluation (samples.jsonl) and by stage 4."""

    eval_prompts: list[str] = field(default_factory=list)
    system_prompt: str | None = None
    generation_config: GenerationSettings = field(default_factory=GenerationSettings)


@dataclass
class SFTTrainingConfig:
    """config/sft_training/*.json (schema: config/schemas/sft_training.schema.json)."""

    name: str
    training_params: TrainingParams
    lora_config: LoraSettings | None = None
    quantization: QuantizationParams | None = None
    data_weights: dict = field(default_factory=dict)
    evaluation_config: EvaluationConfig = field(default_factory=EvaluationConfig)
    description: str = ""

    def __post_init__(self) -> None:
        if self.quantization is not None and self.lora_config is None:
            raise ValueError("quantization: a 4-bit base cannot be fine-tuned in full (its weights are frozen "
                             "4-bit integers); add a lora_config block (QLoRA) or remove quantization")


@dataclass
class PretrainConfig:
    """config/pretrain/*.json (schema: config/schemas/pretrain.schema.json)."""

    name: str
    data: PretrainData
    training_params: TrainingParams
    model: ModelArchitecture = field(default_factory=ModelArchitecture)
    lora_config: LoraSettings | None = None
    description: str = ""
