"""One benchmark run, inside its own fresh process: this trainer, TRL's SFTTrainer, or the HF Trainer.

Every runner trains the same initial weights on the same prepared examples (``RunSpec.order``: the
stream this trainer's sampler draws, so step k holds the same examples everywhere, except for
TRL's BFD packing, which regroups them), with AdamW, a constant learning rate, the same gradient
clipping and the same number of optimizer steps, and returns one ``StepRecord`` per step.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from utils.bench.metrics import ModelShape, StepRecord, model_shape, peak_rss_mb
from utils.common.config import load_config
from utils.common.labels import IGNORE
from utils.data.shards import load_manifest
from utils.data.tokenizer import load_tokenizer
from utils.parallel.lora import LoraSettings, apply_lora
from utils.sampling.example_store import load_sft_store
from utils.train.cli import SFTInputs
from utils.train.config import SFTTrainingConfig
from utils.train.stage_sft import run_sft

TRAINERS = ("ours", "trl", "trl_packed", "trl_bf16", "hf")


@dataclass
class RunSpec:
    """Everything one run needs; written as JSON by the parent, read by the child."""

    trainer: str
    model_dir: str
    tokenizer_dir: str
    data_dir: str
    work_dir: str
    order: list[int]              # train-split example indices, in the order the steps consume them
    examples_per_step: int
    steps: int
    seq: int
    learning_rate: float
    seed: int = 1234
    lora: dict | None = None      # LoraSettings fields, or None for full fine-tuning
    threads: int | None = None
    micro_examples: int | None = None  # examples per micro-batch (accumulation makes up the step)
    params: dict = field(default_factory=dict)  # this trainer: training_params on top of the bench's (levers)
    quantization: dict | None = None   # the SFT config's quantization block (QLoRA), this trainer only
    gradient_checkpointing: bool = False  # this trainer only (the QLoRA comparison)

    @classmethod
    def load(cls, path: Path) -> "RunSpec":
        return cls(**json.loads(Path(path).read_text()))


@dataclass
class RunResult:
    trainer: str
    records: list[StepRecord]
    peak_rss_mb: float
    shape: ModelShape
    notes: list[str] = field(default_factory=list)
    peak_gpu_mb: float | None = field(default_factory=lambda: torch.cuda.max_memory_allocated() / 2**20
                                      if torch.cuda.is_available() else None)

    def to_json(self) -> dict:
        out = asdict(self)
        out["shape"] = asdict(self.shape)
        return out


def run_child(spec: RunSpec) -> RunResult:
    """Run ``spec`` in this process (a fresh one: the parent starts a process per run)."""
    if spec.threads:
        torch.set_num_threads(spec.threads)
    if spec.trainer == "ours":
        return run_ours(spec)
    if spec.trainer in ("trl", "trl_packed", "trl_bf16"):
        return run_trl(spec)
    if spec.trainer == "hf":
        return run_hf(spec)
    raise ValueError(f"unknown trainer {spec.trainer}; use one of {TRAINERS}")


# ---------------------------------------------------------------------------------------- this trainer
def run_ours(spec: RunSpec) -> RunResult:
    """scripts/03_sft_industrial.py's own wiring (utils.train.stage_sft.run_sft), logging every step."""
    work = Path(spec.work_dir)
    micro = spec.micro_examples or spec.examples_per_step
    config = {"name": f"bench_{spec.trainer}", "training_params": {
        "learning_rate": spec.learning_rate, "max_steps": spec.steps,
        "per_device_train_batch_size": micro, "gradient_accumulation_steps": spec.examples_per_step // micro,
        "warmup_steps": 0, "scheduler": "constant", "weight_decay": 0.0, "adam_beta1": 0.9,
        "adam_beta2": 0.95, "max_grad_norm": 1.0, "logging_steps": 1, "eval_steps": 0,
        "save_steps": 0, "save_total_limit": 1, "eval_max_batches": 1, "bf16": "auto", "seed": spec.seed,
        "gradient_checkpointing": spec.gradient_checkpointing, **spec.params}}
    if spec.lora:
        config["lora_config"] = spec.lora
    if spec.quantization:
        config["quantization"] = spec.quantization
    (work / "config.json").write_text(json.dumps(config, indent=2))
    cfg = load_config(work / "config.json", "sft_training", SFTTrainingConfig)
    run_sft(cfg, SFTInputs(model_path=spec.model_dir, tokenizer_path=spec.tokenizer_dir, data_dirs=[spec.data_dir],
                           output_dir=work / "out", overwrite_output_dir=True))  # the bench owns its runs
    metrics = [json.loads(line) for line in (work / "out" / "metrics.jsonl").read_text().splitlines()]
    steps = [m for m in metrics if "loss" in m]
    shape = _shape_of_saved(spec)
    lengths, supervised = _order_stats(spec)
    records, tokens, sup = [], 0, 0
    for k, m in enumerate(steps):
        step_lengths = _step_lengths(lengths, spec, k)
        records.append(StepRecord(end_s=m["elapsed_s"], tokens=m["tokens"] - tokens,
                                  supervised=m["supervised_tokens"] - sup, slots=m["tokens"] - tokens,
                                  flops=shape.step_flops(step_lengths), loss=m["loss"],
                                  cpu_s=m.get("process_cpu_s", float("nan"))))
        tokens, sup = m["tokens"], m["supervised_tokens"]
    return RunResult(spec.trainer, records, peak_rss_mb(), shape,
                     notes=_check_same_data(records, lengths, supervised, spec))


def _shape_of_saved(spec: RunSpec) -> ModelShape:
    """The FLOP shape of the model as this run trains it (LoRA adds its matrices), built on meta."""
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(spec.model_dir))
    if spec.lora:
        model = apply_lora(model, LoraSettings(**spec.lora))
    return model_shape(model)


def _order_stats(spec: RunSpec) -> tuple[np.ndarray, np.ndarray]:
    """Tokens and supervised targets of every example in ``spec.order``."""
    store = _train_store(spec.data_dir)
    order = np.asarray(spec.order)
    return store.lengths[order], store.supervised_targets[order]


def _step_lengths(lengths: np.ndarray, spec: RunSpec, step: int) -> np.ndarray:
    b = spec.examples_per_step
    return lengths[step * b:(step + 1) * b]


def _check_same_data(records: list[StepRecord], lengths, supervised, spec: RunSpec) -> list[str]:
    """This trainer draws its own examples; they must be the ones the other trainers were given."""
    b = spec.examples_per_step
    expected = [(int(lengths[k * b:(k + 1) * b].sum()), int(supervised[k * b:(k + 1) * b].sum()))
                for k in range(len(records))]
    got = [(r.tokens, r.supervised) for r in records]
    return [] if got == expected else ["data order differs from the other trainers' (token counts differ)"]


def _train_store(data_dir: str):
    manifest = load_manifest(Path(data_dir))
    return load_sft_store(Path(data_dir), "train", manifest)


# ---------------------------------------------------------------------------------------- TRL / HF
class StepClock:
    """A TrainerCallback that stamps the end of every optimizer step and keeps the logged losses."""

    def __init__(self):
        from transformers import TrainerCallback

        clock = self

        class _Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                clock.ends.append((time.perf_counter(), time.process_time()))

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    clock.losses[state.global_step] = float(logs["loss"])

        self.ends: list[tuple[float, float]] = []  # (wall, process CPU) at each step end
        self.losses: dict[int, float] = {}
        self.callback = _Callback()


class CountingCollator:
    """Wraps a collator; records per batch the real tokens, supervised targets, computed slots, lengths."""

    def __init__(self, inner):
        self.inner = inner
        self.batches: list[tuple[int, int, int, list[int]]] = []

    def __call__(self, examples):
        batch = self.inner(examples)
        lengths, supervised = [], 0
        for ex in examples:
            labels = np.asarray(ex["labels"])
            bounds = np.cumsum([0] + list(ex.get("seq_lengths") or [len(labels)]))
            for a, b in zip(bounds[:-1], bounds[1:]):
                lengths.append(int(b - a))
                supervised += int((labels[a + 1:b] != IGNORE).sum())  # an example's first label is no target
        self.batches.append((sum(lengths), supervised, int(batch["input_ids"].numel()), lengths))
        return batch


def _examples_dataset(spec: RunSpec):
    """The examples of ``spec.order`` as a datasets.Dataset of input_ids/labels (labels unshifted)."""
    from datasets import Dataset

    store = _train_store(spec.data_dir)
    rows = {"input_ids": [], "labels": []}
    for i in spec.order:
        ids, labels = store.get(int(i))
        rows["input_ids"].append(ids.astype(np.int64).tolist())
        rows["labels"].append(labels.astype(np.int64).tolist())
    return Dataset.from_dict(rows)


def _load_model(spec: RunSpec, dtype=torch.float32):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(spec.model_dir, dtype=dtype, attn_implementation="sdpa")
    model.config.use_cache = False
    return model


def _training_kwargs(spec: RunSpec, bf16: bool) -> dict:
    micro = spec.micro_examples or spec.examples_per_step
    if spec.examples_per_step % micro:
        raise ValueError(f"examples per step {spec.examples_per_step} is no multiple of the micro-batch {micro}")
    return dict(output_dir=str(Path(spec.work_dir) / "out"), max_steps=spec.steps,
                per_device_train_batch_size=micro, gradient_accumulation_steps=spec.examples_per_step // micro,
                learning_rate=spec.learning_rate, lr_scheduler_type="constant", warmup_steps=0,
                weight_decay=0.0, adam_beta1=0.9, adam_beta2=0.95, adam_epsilon=1e-8, max_grad_norm=1.0,
                logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
                seed=spec.seed, data_seed=spec.seed, dataloader_num_workers=0, dataloader_pin_memory=False,
                train_sampling_strategy="sequential", gradient_checkpointing=False, bf16=bf16,
                use_cpu=not torch.cuda.is_available())


def _lora_config(spec: RunSpec):
    from peft import LoraConfig

    lora = dict(spec.lora)
    return LoraConfig(r=lora["r"], lora_alpha=lora["lora_alpha"], lora_dropout=lora.get("lora_dropout", 0.0),
                      target_modules=lora["target_modules"], bias=lora.get("bias", "none"), task_type="CAUSAL_LM")


def run_trl(spec: RunSpec) -> RunResult:
    """TRL SFTTrainer: padding-free (``trl``, ``trl_bf16``) or BFD-packed rows of ``seq`` (``trl_packed``)."""
    from trl import SFTConfig, SFTTrainer

    packed, bf16 = spec.trainer == "trl_packed", spec.trainer == "trl_bf16"
    tokenizer = _tokenizer(spec)
    dataset = _examples_dataset(spec)
    kwargs = _training_kwargs(spec, bf16)
    if packed:  # rows of seq tokens, as many as make the same tokens per step on average, one per micro-batch
        mean_tokens = np.mean([len(x) for x in dataset["input_ids"]]) * spec.examples_per_step
        rows = max(1, round(mean_tokens / spec.seq))
        kwargs.update(per_device_train_batch_size=1, gradient_accumulation_steps=rows)
    args = SFTConfig(**kwargs,
                     padding_free=not packed, packing=packed, packing_strategy="bfd",
                     max_length=spec.seq if packed else None, completion_only_loss=True,
                     dataset_num_proc=None, shuffle_dataset=False)
    torch.manual_seed(spec.seed)
    model = _load_model(spec)
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=_lora_config(spec) if spec.lora else None)
    notes = [f"{kwargs['gradient_accumulation_steps']} packed row(s) of {spec.seq} tokens per step"] if packed else []
    return _train_and_collect(spec, trainer, notes)


def run_hf(spec: RunSpec) -> RunResult:
    """transformers Trainer: batches padded to the longest example, labels -100 on prompt and padding."""
    from transformers import DataCollatorForSeq2Seq, Trainer, TrainingArguments

    tokenizer = _tokenizer(spec)
    model = _load_model(spec)
    if spec.lora:
        from peft import get_peft_model

        torch.manual_seed(spec.seed)
        model = get_peft_model(model, _lora_config(spec))
    collator = DataCollatorForSeq2Seq(tokenizer, padding="longest", label_pad_token_id=IGNORE)
    trainer = Trainer(model=model, args=TrainingArguments(**_training_kwargs(spec, False)),
                      train_dataset=_examples_dataset(spec), data_collator=collator)
    return _train_and_collect(spec, trainer, [])


def _tokenizer(spec: RunSpec):
    tokenizer = load_tokenizer(spec.tokenizer_dir)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _train_and_collect(spec: RunSpec, trainer, notes: list[str]) -> RunResult:
    clock = StepClock()
    trainer.add_callback(clock.callback)
    trainer.data_collator = counting = CountingCollator(trainer.data_collator)
    shape = model_shape(trainer.model)
    trainer.train()
    per_step = len(counting.batches) // max(1, len(clock.ends))
    records = []
    for k, (end, cpu) in enumerate(clock.ends):
        group = counting.batches[k * per_step:(k + 1) * per_step]
        lengths = [n for g in group for n in g[3]]
        records.append(StepRecord(end_s=end, tokens=sum(g[0] for g in group), supervised=sum(g[1] for g in group),
                                  slots=sum(g[2] for g in group), flops=shape.step_flops(np.array(lengths)),
                                  loss=clock.losses.get(k + 1), cpu_s=cpu))
    return RunResult(spec.trainer, records, peak_rss_mb(), shape, notes=notes)
