"""Wiring shared by the training stages: the start (accelerator, seed, tokenizer), step planner, optimizer,
resume, plan print-out."""
from __future__ import annotations

import contextlib
import copy
import os
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch
from accelerate.utils import set_seed

from utils.checkpoint.checkpoints import list_checkpoints, load_checkpoint, load_training_state
from utils.common.atomic import check_owner, exclusive, mark_owner, write_json_atomic
from utils.common.errors import UserError
from utils.data.fingerprint import tokenizer_fingerprint
from utils.data.tokenizer import hf_dir_for, load_tokenizer
from utils.model.architectures import check_model, default_lora_targets
from utils.model.attention import use_packed_attention
from utils.model.loss import SupervisedLoss
from utils.model.modeling import count_parameters
from utils.monitor.trackers import RunLogger, make_trackers
from utils.monitor.run_plan import RunPlan
from utils.parallel.accelerator import make_accelerator
from utils.parallel.lora import LoraSettings, apply_lora
from utils.sampling.example_store import ExampleStore
from utils.sampling.planner import MixtureSampler, StepPlanner
from utils.train.cli import RunInputs
from utils.train.loop import TrainRun, TrainState
from utils.train.params import TrainingParams, build_optimizer, lr_lambda
from utils.train.resume_policy import apply_changes, check_changes, describe, describe_weights


def start_stage(params: TrainingParams, tokenizer_path: str, output_dir: Path) -> tuple[object, object, str]:
    """How both stages begin: the accelerator (with the trackers of report_to), the seed, the tokenizer and its
    fingerprint."""
    trackers = make_trackers(params.report_to, Path(output_dir), Path(output_dir).name)
    accelerator = make_accelerator(params.mixed_precision(), trackers)
    set_seed(params.seed)
    tokenizer = load_tokenizer(tokenizer_path)
    return accelerator, tokenizer, tokenizer_fingerprint(hf_dir_for(tokenizer_path))


def adapt_model(model, lora: LoraSettings | None, where: str):
    """Refuse an unsupported architecture; wrap LoRA, targeting every attention and MLP layer of the
    architecture when ``lora.target_modules`` is left out. Returns the model and the LoRA settings as applied
    (targets filled in), which the run records, so a resume compares the layers actually adapted."""
    check_model(model, where)
    if lora is None:
        return model, None
    if lora.target_modules is None:
        lora = replace(lora, target_modules=default_lora_targets(model))
    return apply_lora(model, lora), lora


@contextlib.contextmanager
def own_output(accelerator, inputs: RunInputs, kind: str):
    """Hold ``inputs.output_dir`` for this run: locked, owned by a ``kind`` stage, no other run's checkpoints.

    The main process checks and locks; every rank learns the outcome, so none waits for a refused run.
    """
    with contextlib.ExitStack() as stack:
        failure = None
        if accelerator.is_main_process:
            try:
                stack.enter_context(exclusive(inputs.output_dir))
                _claim(inputs, kind)
                record_command(inputs.output_dir)
            except UserError as err:
                failure = err
        if accelerator.num_processes > 1:
            flag = torch.tensor([float(failure is not None)], device=accelerator.device)
            if accelerator.reduce(flag, "sum").item() and failure is None:
                failure = UserError("--output_dir: refused on the main process; see its message")
        if failure is not None:
            raise failure
        yield


COMMAND = "command.json"
"""The command line that started the run (argv, interpreter, working directory): how to run it again or resume it."""


def record_command(output_dir: Path) -> None:
    write_json_atomic(Path(output_dir) / COMMAND, {"argv": sys.argv, "python": sys.executable, "cwd": os.getcwd()})


_RUN_OUTPUTS = ("final", "metrics.jsonl", "samples.jsonl", "tensorboard", "loss.png", COMMAND)
"""What a training run writes besides its checkpoints: --overwrite_output_dir deletes these too."""


def _claim(inputs: RunInputs, kind: str) -> None:
    """Refuse another stage's directory and, unless resuming or overwriting, another run's checkpoints."""
    out = inputs.output_dir
    check_owner(out, kind)
    found = list_checkpoints(out) if out.is_dir() else []
    if found and not inputs.resume_from_checkpoint:
        if not inputs.overwrite_output_dir:
            raise UserError(
                f"--output_dir {out}: holds checkpoints of an earlier run ({', '.join(p.name for p in found)}); "
                "pass --resume_from_checkpoint auto to continue it, or --overwrite_output_dir to delete them and "
                "start over, or choose another --output_dir")
        for old in [*found, *(out / name for name in _RUN_OUTPUTS)]:
            if old.is_dir():
                trash = old.with_name(f".{old.name}.deleting")
                shutil.rmtree(trash, ignore_errors=True)
                os.replace(old, trash)  # out of the listing first: a crash never leaves half a checkpoint
                shutil.rmtree(trash, ignore_errors=True)
            elif old.exists():
                old.unlink()
        print(f"--overwrite_output_dir: deleted the earlier run's {len(found)} checkpoint(s), final/ and metrics "
              f"in {out}", flush=True)
    out.mkdir(parents=True, exist_ok=True)
    mark_owner(out, kind)


def make_planner(stores: list[ExampleStore], weights: list[float], params: TrainingParams,
                 world_size: int, max_example_tokens: int) -> StepPlanner:
    """The global step plan; a token budget must hold the longest example."""
    if params.micro_batch_tokens is not None and params.micro_batch_tokens < max_example_tokens:
        raise UserError(f"training_params.micro_batch_tokens: {params.micro_batch_tokens} is smaller than "
                        f"the longest example ({max_example_tokens} tokens); raise it to at least that")
    sampler = MixtureSampler([len(s) for s in stores], weights, params.seed)
    return StepPlanner(sampler, [s.lengths for s in stores], [s.supervised_targets for s in stores],
                       num_bins=params.micro_batches_per_step(world_size),
                       examples_per_bin=params.per_device_train_batch_size,
                       bin_tokens=params.micro_batch_tokens)


def count_steps(planner: StepPlanner, params: TrainingParams, num_examples: int) -> tuple[int, str]:
    """Total optimizer steps and where the number came from."""
    if params.max_steps:
        return params.max_steps, "training_params.max_steps"
    epochs = params.num_train_epochs or 1.0
    target = epochs * num_examples
    dry = copy.deepcopy(planner)
    steps = 0
    while sum(dry.sampler.drawn) - len(dry.carry) < target:
        dry.next_step()
        steps += 1
    return max(1, steps), f"{epochs:g} epoch(s) over {num_examples:,} weighted examples"


def build_run(accelerator, model, stores, val_stores, weights, params: TrainingParams,
              output_dir: Path, run_info: dict, resume: Path | None, plan: RunPlan,
              max_example_tokens: int) -> tuple[TrainRun, TrainState]:
    """Prepare model, optimizer, schedule and planner; restore a checkpoint when resuming."""
    use_packed_attention(model, fp32=bool(params.attention_fp32 and params.bf16))
    if params.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    world = accelerator.num_processes
    planner = make_planner(stores, weights, params, world, max_example_tokens)
    total_steps, steps_from = count_steps(planner, params, sum(len(s) for s in stores))
    loss_module = SupervisedLoss(model, num_sources=max(len(stores), len(val_stores)))
    optimizer = build_optimizer(loss_module, params)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(params, total_steps))
    loss_module, optimizer = accelerator.prepare(loss_module, optimizer)
    _describe(plan, params, world, total_steps, steps_from, model)
    state = TrainState()
    if resume is not None:
        state = _resume(accelerator, resume, (loss_module, optimizer, scheduler, planner), run_info, params,
                        total_steps)
        if accelerator.is_main_process:
            print(f"resuming from {resume.name} (step {state.step} of {total_steps})", flush=True)
    logger = RunLogger(accelerator, state.step, run_info.get("config"))
    run = TrainRun(accelerator, loss_module, optimizer, scheduler, planner, stores, val_stores, params,
                   total_steps, output_dir, logger, {**run_info, "plan": plan.as_dict()},
                   start_time=time.perf_counter())
    return run, state


def _describe(plan: RunPlan, params: TrainingParams, world: int, total_steps: int, steps_from: str, model) -> None:
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
        plan.add("LoRA targets", ", ".join(targets), "lora_config.target_modules (absent: every attention and "
                 f"MLP layer of {model.config.model_type})")
    plan.add("total parameters", total, "model")
    plan.add("precision", "bf16" if params.bf16 else "fp16" if params.fp16 else "fp32", "training_params")
    if params.bf16:
        plan.add("attention", "float32 inside bf16 autocast" if params.attention_fp32 else "bf16",
                 "training_params.attention_fp32")


def _difference(saved, now) -> str:
    """What changed between the checkpoint's and this run's tokenizer hash or per-dir data hashes."""
    if not isinstance(saved, dict) or not isinstance(now, dict):
        return f"{str(saved)[:16]}... in the checkpoint, {str(now)[:16]}... now"
    parts = [f"{label}: {', '.join(names)}" for label, names in (
        ("not in this run", sorted(set(saved) - set(now))), ("new in this run", sorted(set(now) - set(saved))),
        ("changed", sorted(k for k in set(saved) & set(now) if saved[k] != now[k]))) if names]
    return "; ".join(parts)


def _resume(accelerator, path: Path, parts: tuple, run_info: dict, params: TrainingParams,
            total_steps: int) -> TrainState:
    """Restore ``parts`` (loss module, optimizer, scheduler, planner) from ``path``; apply the config changes
    the resume policy allows (utils/train/resume_policy.py) and refuse the others."""
    loss_module, optimizer, scheduler, planner = parts
    saved = load_training_state(path)
    for key in ("tokenizer_sha256", "data_hashes"):
        if key in run_info and saved.get(key) != run_info[key]:
            raise UserError(
                f"{path}: checkpoint was trained with other {key.replace('_', ' ')} "
                f"({_difference(saved.get(key), run_info[key])}); "
                "resume with the same data and tokenizer, or start a new --output_dir")
    changed = check_changes(path, saved, run_info.get("config", {}), params, accelerator.num_processes)
    load_checkpoint(accelerator, path, loss_module, optimizer, scheduler)
    apply_changes(changed, params, optimizer, scheduler, total_steps, saved["step"])
    if changed and accelerator.is_main_process:
        print(describe(changed), flush=True)
    planner.load_state_dict(_with_shares(saved["planner"], saved.get("data_weights")))
    if planner.sampler.changed_from is not None and accelerator.is_main_process:
        names = [Path(d).name for d in run_info.get("data_dirs", [])]
        print(describe_weights(planner.sampler.changed_from, planner.sampler.shares, names, saved["step"]), flush=True)
    return TrainState(step=saved["step"], tokens_seen=saved["tokens_seen"],
                      supervised_seen=saved["supervised_seen"], loss_history=saved["loss_history"],
                      planner=planner.state_dict(), last_eval=saved.get("last_eval", {}),
                      best_step=saved.get("best_step", 0), best_eval_loss=saved.get("best_eval_loss"))


def _with_shares(planner: dict, weights: list[float] | None) -> dict:
    """A planner state from before the sampler recorded its shares gets them from the run's saved weights
    (in the checkpoint's source order), so a changed --data_weights is still recognised."""
    sampler = planner.get("sampler", {})
    if "shares" in sampler or not weights or len(weights) != len(sampler.get("drawn", ())):
        return planner
    total = float(sum(weights))
    return {**planner, "sampler": {**sampler, "shares": [w / total for w in weights]}}

