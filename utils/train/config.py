"""The training configs as typed dataclasses: config/pretrain/*.json and config/sft_training/*.json.

Each dataclass is the one source of its fields: type, default, range or choices (``setting``) and the docstring
under the field, from which config/schemas/ and docs/CONFIG.md are generated (``make config-docs``). Evaluation, the
studio and the benchmarks read a run's saved config through these types without importing a training stage.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from utils.common.config_schema import setting
from utils.data.pretrain_data import PretrainData
from utils.model.generation import GenerationSettings
from utils.model.modeling import ModelArchitecture
from utils.monitor.trackers import TRACKERS
from utils.parallel.lora import LoraSettings

AUTO_BOOL = (True, False, "auto")
"""A switch whose auto is resolved for the hardware at run start."""
HARDWARE_AUTO = ("bf16", "attention_fp32")
"""The switches whose auto depends on the machine alone, resolved by ``start.resolve_auto`` as a run starts and
recorded in its record (``resolved_auto``); fold_micro_batches' auto also needs the model and the free memory and
is resolved with the step's split (``fold.choose_split``)."""
SCHEDULERS = ("cosine", "linear", "constant")
"""Learning-rate decays after warm-up (``optim.lr_lambda``)."""
QUANT_TYPES = ("nf4", "fp4")
"""bitsandbytes 4-bit data types."""
COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
"""dtypes 4-bit weights are dequantized to for each matmul."""


@dataclass(frozen=True)
class TrainingParams:
    """Optimisation, batching, checkpointing and logging of the training loop shared by pre-training/CPT and SFT.

    training_params of the pre-training and SFT configs; each field's docstring is its description."""

    learning_rate: float = setting(3e-4, minimum=0)
    """Peak learning rate of AdamW."""
    num_train_epochs: float | None = setting(None, exclusiveMinimum=0)
    """Passes over the (weighted) training data; ignored when max_steps is set."""
    max_steps: int | None = setting(None, minimum=1)
    """Optimizer steps to run; overrides num_train_epochs."""
    per_device_train_batch_size: int | None = setting(None, minimum=1)
    """Examples per micro-batch on each device. Set this or micro_batch_tokens."""
    micro_batch_tokens: int | None = setting(None, minimum=16)
    """Token budget of one packed micro-batch on each device (padding-free packing). Set this or
    per_device_train_batch_size."""
    gradient_accumulation_steps: int = setting(1, minimum=1)
    """Micro-batches per optimizer step on each device."""
    fold_micro_batches: bool | str = setting("auto", enum=AUTO_BOOL)
    """Run the micro-batches of a step as fewer, larger ones (gradient_accumulation_steps divided and
    micro_batch_tokens multiplied by the largest factor the free device memory holds, by an estimate; the tokens
    per step stay); auto = on for the CUDA path, off on the CPU. The split is recorded in each checkpoint and kept
    on resume."""
    warmup_steps: int = setting(0, minimum=0)
    """Linear warm-up steps from 0 to learning_rate."""
    scheduler: str = setting("cosine", enum=SCHEDULERS)
    """Learning-rate decay after warm-up."""
    min_lr_ratio: float = setting(0.1, minimum=0, maximum=1)
    """Final learning rate as a fraction of learning_rate (cosine and linear)."""
    weight_decay: float = setting(0.0, minimum=0)
    """AdamW weight decay (not applied to norms and biases)."""
    adam_beta1: float = setting(0.9, minimum=0, exclusiveMaximum=1)
    """AdamW beta1."""
    adam_beta2: float = setting(0.95, minimum=0, exclusiveMaximum=1)
    """AdamW beta2."""
    adam_epsilon: float = setting(1e-8, exclusiveMinimum=0)
    """AdamW epsilon."""
    max_grad_norm: float = setting(1.0, minimum=0)
    """Clip the global gradient norm to this value; 0 disables clipping."""
    save_steps: int = setting(0, minimum=0)
    """Write a full-state checkpoint every N optimizer steps; 0 = only at the end."""
    eval_steps: int = setting(0, minimum=0)
    """Evaluate on the validation split every N steps; 0 = only at the end."""
    logging_steps: int = setting(10, minimum=1)
    """Log metrics every N steps (the only steps that synchronise with the device)."""
    save_total_limit: int | None = setting(2, minimum=1)
    """Keep at most this many checkpoints (oldest deleted first); null keeps all."""
    eval_max_batches: int | None = setting(None, minimum=1)
    """Cap on validation micro-batches per evaluation; null = the whole validation split."""
    seed: int = setting(1234, minimum=0)
    """Seed of data order, initialisation and dropout."""
    bf16: bool | str = setting("auto", enum=AUTO_BOOL)
    """bfloat16 autocast; auto = on where bf16 matmul is fast (GPUs with bf16 support, CPUs with
    avx512_bf16 or amx_bf16), off elsewhere (there it is slower than fp32). An auto is resolved as the run starts:
    the plan says to what and why, the checkpoints record it (resolved_auto), and a resume where it resolves
    otherwise applies the new value and says so."""
    fp16: bool = False
    """float16 autocast with loss scaling (GPU only)."""
    attention_fp32: bool | str = setting("auto", enum=AUTO_BOOL)
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
    report_to: list[str] = setting(default_factory=lambda: ["tensorboard"], items={"enum": TRACKERS}, uniqueItems=True)
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
        if self.load_best_model_at_end and not (self.eval_steps > 0 and self.save_steps > 0
                                                 and self.save_steps % self.eval_steps == 0):
            raise ValueError("load_best_model_at_end needs eval_steps > 0 and save_steps a multiple of "
                             f"eval_steps (got eval_steps {self.eval_steps}, save_steps {self.save_steps})")

    def check_resolved(self) -> None:
        """Fail while a hardware-dependent switch is left at auto (``start.resolve_auto`` resolves them at run
        start): code that trains is handed resolved params only."""
        unresolved = [name for name in HARDWARE_AUTO if getattr(self, name) == "auto"]
        if unresolved:
            raise ValueError(f"training_params {', '.join(unresolved)} still auto: resolve them at run start "
                             "(utils/train/start.resolve_auto)")

    def mixed_precision(self) -> str:
        """accelerate's name for the precision: "bf16", "fp16" or "no"."""
        self.check_resolved()
        return "bf16" if self.bf16 else "fp16" if self.fp16 else "no"


@dataclass(frozen=True)
class QuantizationParams:
    """quantization of the SFT config: a 4-bit base under the LoRA adapter (QLoRA, bitsandbytes)."""

    load_in_4bit: bool = setting(True, enum=(True,))
    """Hold the base model's linear layers in 4 bits (bitsandbytes Linear4bit) while LoRA trains in full
    precision on top; the only mode (leave the block out, or set it to null, for a full-precision base)."""
    bnb_4bit_quant_type: str = setting("nf4", enum=QUANT_TYPES)
    """4-bit data type: nf4 (NormalFloat, made for normally distributed weights; lower error) or fp4."""
    bnb_4bit_use_double_quant: bool = True
    """Quantize the per-block scales as well (about 0.4 bits less per weight)."""
    bnb_4bit_compute_dtype: str = setting("float32", enum=COMPUTE_DTYPES)
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


@dataclass(frozen=True)
class EvaluationConfig:
    """evaluation_config of the SFT config: prompts sampled at each evaluation (samples.jsonl) and by stage 4."""

    eval_prompts: list[str] = field(default_factory=list)
    """User prompts to answer at each evaluation, rendered with the data's chat template."""
    system_prompt: str | None = None
    """Optional system message for the eval prompts."""
    generation_config: GenerationSettings = field(default_factory=GenerationSettings)
    """How samples are generated."""


@dataclass(frozen=True)
class SFTTrainingConfig:
    """config/sft_training/*.json (schema: config/schemas/sft_training.schema.json)."""

    name: str
    """Run name, used in logs and the model card."""
    training_params: TrainingParams
    lora_config: LoraSettings | None = None
    quantization: QuantizationParams | None = None
    """A 4-bit base under the LoRA adapter (QLoRA, bitsandbytes; pip install -r requirements-qlora.txt); needs
    lora_config. Absent or null = the base in full precision."""
    data_weights: dict = setting(default_factory=dict, additionalProperties={"type": "number", "minimum": 0})
    """Sampling weight per data directory name (the last path component of each --data_dirs entry); --data_weights
    overrides. Directories not named get weight 1; with no weights at all, directories are sampled in proportion
    to their size."""
    evaluation_config: EvaluationConfig = field(default_factory=EvaluationConfig)
    """Generation samples written at eval_steps (and used by the evaluation stage)."""
    description: str = ""
    """Free text."""

    def __post_init__(self) -> None:
        if self.quantization is not None and self.lora_config is None:
            raise ValueError("quantization: a 4-bit base cannot be fine-tuned in full (its weights are frozen "
                             "4-bit integers); add a lora_config block (QLoRA) or remove quantization")


@dataclass(frozen=True)
class PretrainConfig:
    """config/pretrain/*.json (schema: config/schemas/pretrain.schema.json)."""

    name: str
    """Run name, used in logs."""
    data: PretrainData
    """Raw text to train on: documents separated by EOS and cut into fixed-length sequences."""
    training_params: TrainingParams
    model: ModelArchitecture = field(default_factory=ModelArchitecture)
    """Llama-style architecture for training from scratch (ignored with --model_path, which continues an existing
    checkpoint). The vocabulary size comes from the tokenizer."""
    lora_config: LoraSettings | None = None
    description: str = ""
    """Free text."""
