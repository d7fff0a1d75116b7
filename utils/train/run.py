"""A training run put together: model, optimizer, schedule and step planner prepared by accelerate (``build_run``),
and what a run leaves at its end (``finish``: final/, the loss plot)."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator

from utils.checkpoint.final_model import save_final
from utils.checkpoint.record import RunRecord, TrainingState
from utils.model.attention import attention_dropout, describe as describe_attention, head_dim
from utils.model.architectures import check_model, frozen_experts
from utils.model.kernels import cuda_path
from utils.model.loss import SupervisedLoss, router_of
from utils.model.modeling import count_parameters
from utils.monitor.plots import plot_training
from utils.monitor.run_plan import RunPlan
from utils.parallel.fsdp import gather_dtype, shard
from utils.sampling.example_store import ExampleStore
from utils.sampling.planner import StepPlanner
from utils.train.config import TrainingParams
from utils.train.fold import choose_split
from utils.train.optim import build_optimizer
from utils.train.start import RunStart
from utils.train.steps import plan_steps


@dataclass
class TrainData:
    """What a run trains and validates on."""

    stores: list[ExampleStore]
    """One store per source, in sampling order."""
    weights: list[float]
    """Sampling weight of each store."""
    val_stores: list[ExampleStore]
    longest: int
    """Tokens of the longest training example (a micro-batch token budget must hold it)."""


@dataclass
class TrainRun:
    """Everything the loop touches, made by ``build_run``."""

    accelerator: Accelerator
    loss_module: torch.nn.Module          # SupervisedLoss, prepared by accelerate
    optimizer: torch.optim.Optimizer      # prepared by accelerate
    scheduler: torch.optim.lr_scheduler.LambdaLR
    planner: StepPlanner
    stores: list[ExampleStore]
    val_stores: list[ExampleStore]
    params: TrainingParams
    total_steps: int
    output_dir: Path
    record: RunRecord                      # saved into training_state.json of each checkpoint, with the plan
    start_time: float                      # time.perf_counter() at set-up: metrics' elapsed_s counts from it
    label: str = "training"                # the progress bar's name
    on_eval: Callable[["TrainRun", int], dict] | None = None   # after each evaluation, e.g. generation samples
    sharded: bool = False                  # FSDP2: every rank holds a shard of the weights and optimizer state
    pin_memory: bool = False               # batches copied to the GPU from page-locked memory


def build_run(start: RunStart, model, data: TrainData, params: TrainingParams, *, output_dir: Path,
              record: RunRecord, plan: RunPlan, label: str = "training", on_eval=None,
              resumed: TrainingState | None = None) -> TrainRun:
    """Split each step for the device (``fold.choose_split``; ``resumed``: the training state of the checkpoint the
    run continues, whose split it keeps), plan the steps, build optimizer and schedule, prepare them with the model
    (FSDP2 over every rank when the run is sharded, else accelerate: DDP or one process); the derived numbers go
    into ``plan`` and, with the split, into the run's ``record``. ``model`` is ready to train
    (``start.ready_to_train``)."""
    accelerator, sharded = start.accelerator, start.sharding == "fsdp2"
    world = accelerator.num_processes
    split = choose_split(params, model, accelerator.device, world, world if sharded else 1, resumed,
                         cuda_path(accelerator.device))
    planned = split.params
    planner, total_steps, steps_from = plan_steps(data.stores, data.weights, planned, world, data.longest)
    loss_module = SupervisedLoss(model, num_sources=max(len(data.stores), len(data.val_stores)))
    if sharded:
        loss_module = shard(loss_module.to(accelerator.device), accelerator.device, start.reshard_after_forward,
                            gather_dtype(params, accelerator.device))
        optimizer, scheduler = build_optimizer(loss_module, params, total_steps)
    else:
        optimizer, scheduler = build_optimizer(loss_module, params, total_steps)
        loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    _describe(plan, planned, world, total_steps, steps_from, model, accelerator.device, start.resolved_auto)
    plan.add("micro-batch split", f"{split.factor} configured micro-batch(es) per device pass", split.why)
    kind = "fused" if optimizer.defaults.get("fused") else "foreach" if optimizer.defaults.get("foreach") else "for-loop"
    plan.add("optimizer", f"AdamW, {kind}", "fused where torch has it for every trainable tensor")
    if sharded:
        plan.add("sharding", f"FSDP2 over {world} rank(s): weights, gradients, optimizer state", start.sharding_from)
        plan.add("gathered weights after forward", "freed" if start.reshard_after_forward else "kept for backward",
                 "fsdp_reshard_after_forward (default: freed)")
        gather = gather_dtype(params, accelerator.device)
        plan.add("FSDP2 precision", "weights gathered in bf16, gradients reduced in fp32 (MixedPrecisionPolicy)"
                 if gather else "weights gathered and gradients reduced in fp32",
                 "training_params.bf16 on the CUDA path" if gather else "training_params (bf16 gathers: CUDA path)")
        plan.add("checkpoints", "full state dicts keyed by name (resume on any world size)", "this trainer")
    return TrainRun(accelerator, loss_module, optimizer, scheduler, planner, data.stores, data.val_stores, params,
                    total_steps, output_dir, replace(record, plan=plan.as_dict(), micro_batch_split=split.record,
                                                                  resolved_auto=start.resolved_auto or None),
                    start_time=time.perf_counter(),
                    label=label, on_eval=on_eval, sharded=sharded,
                    pin_memory=params.dataloader_pin_memory and accelerator.device.type == "cuda")


def _describe(plan: RunPlan, params: TrainingParams, world: int, total_steps: int, steps_from: str, model,
              device: torch.device, auto: dict) -> None:
    accum = params.gradient_accumulation_steps
    plan.add("world size", world, "accelerate")
    if params.micro_batch_tokens:
        plan.add("micro-batch tokens", params.micro_batch_tokens, "training_params.micro_batch_tokens")
        plan.add("tokens per optimizer step (max)", params.micro_batch_tokens * accum * world,
                 "micro-batch tokens x accumulation x world size")
    else:
        plan.add("examples per micro-batch", params.per_device_train_batch_size,
                 "training_params.per_device_train_batch_size")
        plan.add("examples per optimizer step", params.per_device_train_batch_size * accum * world,
                 "batch x accumulation x world size")
    plan.add("gradient accumulation", accum, "training_params.gradient_accumulation_steps")
    plan.add("total optimizer steps", total_steps, steps_from)
    trainable, total = count_parameters(model)
    plan.add("trainable parameters", trainable, "LoRA adapter" if hasattr(model, "peft_config") else "full model")
    if hasattr(model, "peft_config"):
        targets = sorted(model.peft_config["default"].target_modules)
        plan.add("LoRA targets", ", ".join(targets), "lora_config.target_modules (absent: every linear layer of "
                 f"the {model.config.model_type} decoder)")
        frozen = frozen_experts(model)
        if frozen:
            plan.add("MoE experts", f"{frozen:,} weights of fused experts frozen (not linear layers)", "LoRA")
    if router_of(model):
        plan.add("router auxiliary loss", f"x {router_of(model).coef:g}, per example, logged as router_aux_loss",
                 "config router_aux_loss_coef")
    verdict = check_model(model)
    plan.add("packed == alone", verdict.describe(), "start-up check (utils/model/packing_check.py)")
    plan.add("total parameters", total, "model")
    plan.add("precision", "bf16" if params.bf16 else "fp16" if params.fp16 else "fp32", _source("bf16", auto))
    plan.add("attention", describe_attention(device, bool(params.bf16 and params.attention_fp32),
                                             _attention_dtype(params, model), head_dim(model.config),
                                             attention_dropout(model.config), verdict.slow_features()),
             f"packed rows on {device.type} ({_source('attention_fp32', auto)})")
    plan.add("torch.compile", "every decoder layer (inductor), packed attention eager" if params.compile else "off",
             "training_params.compile")
    if params.dataloader_pin_memory:
        plan.add("pinned batches", "yes" if device.type == "cuda" else "no: nothing is copied to a device on the CPU",
                 "training_params.dataloader_pin_memory" + ("" if device.type == "cuda" else " (ignored here)"))


def _source(name: str, auto: dict) -> str:
    """Where a switch's value came from: the config, or its auto as resolved for this machine (and why)."""
    if name in auto:
        return f"training_params.{name} auto: {'on' if auto[name]['value'] else 'off'}, {auto[name]['why']}"
    return f"training_params.{name}"


def _attention_dtype(params: TrainingParams, model) -> torch.dtype:
    """What attention computes in: the autocast dtype, else the dtype of the weights."""
    if params.bf16 or params.fp16:
        return torch.bfloat16 if params.bf16 else torch.float16
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def finish(run: TrainRun, state, tokenizer_path: str, summary: dict, merge_adapter: bool, title: str,
           stop_token_ids: list[int] | None = None) -> Path | None:
    """Write final/ (weights, tokenizer, ``summary`` with the best checkpoint) and, on the main process, the
    loss plot; returns final/ (None on other ranks)."""
    final = save_final(run.accelerator, run.loss_module, run.output_dir / "final", tokenizer_path,
                       {**summary, "best_checkpoint": best_checkpoint(state, run.params)}, merge_adapter=merge_adapter,
                       stop_token_ids=stop_token_ids)
    if run.accelerator.is_main_process:
        plot_training(run.output_dir / "metrics.jsonl", run.output_dir / "loss.png", title)
    return final


def best_checkpoint(state, params: TrainingParams) -> dict | None:
    """What the training summary says about load_best_model_at_end (None when it is off)."""
    if not params.load_best_model_at_end:
        return None
    return {"step": state.best_step, "eval_loss": state.best_eval_loss, "last_step": state.step}
