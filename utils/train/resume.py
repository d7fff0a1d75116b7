"""Resume: find the checkpoint to continue from, check it fits this run, restore the whole run state from it.

A checkpoint (utils/checkpoint/checkpoints.py) holds weights, optimizer, scheduler, every rank's RNG and
training_state.json (``record.TrainingState``: step, tokens, losses, sampler position, the run's record).
``restore`` puts all of it back, so a resumed run continues bit-identically.

A checkpoint also restores the optimizer and scheduler state, which carry the learning rate, weight decay and
AdamW constants the run was started with; a changed value would be silently ignored. So each field of
``TrainingParams`` (and the LoRA and quantization settings) has one policy, documented in docs/RELIABILITY.md:

- APPLIED from the resume step and announced in one line ("changed on resume: learning_rate 0.003 -> 0.0003");
- REFUSED in one line naming the field (they change the data order or the model's shape);
- the global step shape, gradient_accumulation_steps x world size, must stay: accumulation may trade against
  processes (a 2-process checkpoint resumes on 1 process with twice the accumulation).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from utils.checkpoint.checkpoints import load_checkpoint, load_training_state, resolve_resume
from utils.checkpoint.record import RunRecord, SFTRecord, StageRecord, TrainingState
from utils.common.errors import UserError
from utils.train.config import TrainingParams
from utils.train.loop import TrainState
from utils.train.optim import lr_lambda
from utils.train.run import TrainRun


@dataclass
class Checkpoint:
    """The checkpoint a run continues from."""

    path: Path
    saved: TrainingState
    """Its training_state.json: the loop's state and the run's record."""


def find_checkpoint(spec: str | None, output_dir: Path, main: bool) -> Checkpoint | None:
    """The checkpoint ``--resume_from_checkpoint`` names (``auto``: the newest intact one; None without the flag)."""
    path = resolve_resume(spec, output_dir, main)
    return None if path is None else Checkpoint(path, load_training_state(path))


def restore(run: TrainRun, checkpoint: Checkpoint | None) -> TrainState:
    """Where ``run`` starts: a fresh state, or everything ``checkpoint`` saved put back into the run (weights,
    optimizer, scheduler, RNG, sampler); the config changes the policy allows are applied and announced, the
    others refused."""
    if checkpoint is None:
        return TrainState()
    acc, path, saved = run.accelerator, checkpoint.path, checkpoint.saved
    before, now = saved.run_record(type(run.record)), run.record
    for key in ("tokenizer_sha256", "data_hashes"):
        if getattr(before, key) != getattr(now, key):
            raise UserError(
                f"{path}: checkpoint was trained with other {key.replace('_', ' ')} "
                f"({_difference(getattr(before, key), getattr(now, key))}); "
                "resume with the same data and tokenizer, or start a new --output_dir")
    changed = _check_changes(path, saved, now.config or {}, run.params, acc.num_processes)
    _check_base(path, before, now)  # after the quantization check: a 4-bit base differs in its weights
    load_checkpoint(acc, path, run.loss_module, run.optimizer, run.scheduler)
    _apply_changes(changed, run.params, run.optimizer, run.scheduler, run.total_steps, saved.step)
    if changed and acc.is_main_process:
        print(_describe_changes(changed, now.resolved_auto or {}), flush=True)
    sampler = run.planner.sampler
    run.planner.load_state_dict(_with_shares(saved.planner, saved.record.get("data_weights")))
    if sampler.changed_from is not None and acc.is_main_process:
        names = [Path(d).name for d in now.data_dirs or []] if isinstance(now, SFTRecord) else []
        print(_describe_weights(sampler.changed_from, sampler.shares, names, saved.step), flush=True)
    if acc.is_main_process:
        print(f"resuming from {path.name} (step {saved.step} of {run.total_steps})", flush=True)
    return TrainState.resumed(saved)


def _check_base(path: Path, before: RunRecord, now: RunRecord) -> None:
    """An adapter resumes only on the base model it was trained on: the same weights, whatever the path."""
    if not isinstance(now, StageRecord) or not (now.config or {}).get("lora_config"):
        return
    was, is_now = before.base_model_sha256, now.base_model_sha256
    if not was or not is_now or was == is_now:
        return
    raise UserError(f"{path}: the checkpoint's adapter was trained on another base model (weights sha256 "
                    f"{was[:12]} in the checkpoint, {is_now[:12]} for --model_path {now.model_path}); "
                    f"resume with the base it was trained on ({before.model_path}), or start a new "
                    "--output_dir")


def _difference(saved, now) -> str:
    """What changed between the checkpoint's and this run's tokenizer hash or per-dir data hashes."""
    if not isinstance(saved, dict) or not isinstance(now, dict):
        return f"{str(saved)[:16]}... in the checkpoint, {str(now)[:16]}... now"
    parts = [f"{label}: {', '.join(names)}" for label, names in (
        ("not in this run", sorted(set(saved) - set(now))), ("new in this run", sorted(set(now) - set(saved))),
        ("changed", sorted(k for k in set(saved) & set(now) if saved[k] != now[k]))) if names]
    return "; ".join(parts)


def _with_shares(planner: dict, weights: list[float] | None) -> dict:
    """A planner state from before the sampler recorded its shares gets them from the run's saved weights
    (in the checkpoint's source order), so a changed --data_weights is still recognised."""
    sampler = planner.get("sampler", {})
    if "shares" in sampler or not weights or len(weights) != len(sampler.get("drawn", ())):
        return planner
    total = float(sum(weights))
    return {**planner, "sampler": {**sampler, "shares": [w / total for w in weights]}}


# --- the resume policy: what may change on resume ------------------------------------------------------------

APPLIED = ("learning_rate", "scheduler", "warmup_steps", "min_lr_ratio", "weight_decay", "adam_beta1", "adam_beta2",
           "adam_epsilon", "max_grad_norm", "max_steps", "num_train_epochs", "save_steps", "eval_steps",
           "logging_steps", "save_total_limit", "eval_max_batches", "gradient_checkpointing", "bf16", "fp16",
           "attention_fp32", "load_best_model_at_end", "report_to", "dataloader_pin_memory", "compile")
REFUSED = {"seed": "it sets the data order",
           "per_device_train_batch_size": "it sets the batch shape of the data order",
           "micro_batch_tokens": "it sets the batch shape of the data order",
           "fold_micro_batches": "the checkpoint's split of each step is kept"}
OPTIMIZER_FIELDS = ("learning_rate", "scheduler", "warmup_steps", "min_lr_ratio", "weight_decay", "adam_beta1",
                    "adam_beta2", "adam_epsilon", "max_steps", "num_train_epochs")
"""The fields the restored optimizer/scheduler state would otherwise override."""
assert set(APPLIED) | set(REFUSED) | {"gradient_accumulation_steps"} == {
    f.name for f in dataclasses.fields(TrainingParams)}, "every training parameter needs a resume policy"


def _check_changes(path: Path, saved: TrainingState, config: dict, params: TrainingParams, world: int) -> dict:
    """Refuse what may not change; return {field: (saved, now)} of what changed and is applied."""
    saved_config = saved.record.get("config") or {}
    before = saved_config.get("training_params") or {}
    now = json.loads(json.dumps(dataclasses.asdict(params)))  # as the checkpoint holds it (lists, not tuples)
    config = json.loads(json.dumps(config))
    for name, why in REFUSED.items():
        if name in before and before[name] != now[name]:
            raise UserError(f"{path}: training_params.{name} is {before[name]} in the checkpoint and {now[name]} now; "
                            f"it cannot change on resume ({why}) — put it back, or start a new --output_dir")
    if "gradient_accumulation_steps" in before and saved.world_size is not None:
        was = before["gradient_accumulation_steps"] * saved.world_size
        if was != params.gradient_accumulation_steps * world:
            raise UserError(f"{path}: gradient_accumulation_steps x processes is {was} in the checkpoint and "
                            f"{params.gradient_accumulation_steps * world} now; the micro-batches per step cannot "
                            "change on resume — keep their product, or start a new --output_dir")
    lora_before = saved_config.get("lora_config", "absent")
    if lora_before != "absent" and lora_before != config.get("lora_config"):
        raise UserError(f"{path}: lora_config differs from the checkpoint's ({lora_before} then, "
                        f"{config.get('lora_config')} now); it cannot change on resume — put it back, "
                        "or start a new --output_dir")
    quant_before = saved_config.get("quantization")  # checkpoints before QLoRA: none
    if quant_before != config.get("quantization"):
        raise UserError(f"{path}: quantization differs from the checkpoint's ({quant_before} then, "
                        f"{config.get('quantization')} now); the base weights' precision cannot change on resume "
                        "— put it back, or start a new --output_dir")
    return {k: (before[k], now[k]) for k in APPLIED if k in before and before[k] != now[k]}


def _apply_changes(changed: dict, params: TrainingParams, optimizer, scheduler, total_steps: int, step: int) -> None:
    """Put the new learning rate, schedule, weight decay and AdamW constants into the restored state."""
    if step > total_steps:
        raise UserError(f"training_params.max_steps (or --max_steps): {total_steps} total steps is below the "
                        f"checkpoint's step {step}; give at least {step}, or resume from an earlier checkpoint")
    if not set(changed) & set(OPTIMIZER_FIELDS):
        return  # nothing the restored state holds: leave it exactly as saved
    factor = lr_lambda(params, total_steps)
    scheduler.base_lrs = [params.learning_rate for _ in optimizer.param_groups]
    for i, group in enumerate(optimizer.param_groups):
        group["initial_lr"] = params.learning_rate
        group["lr"] = params.learning_rate * factor(scheduler.last_epoch)
        group["betas"] = (params.adam_beta1, params.adam_beta2)
        group["eps"] = params.adam_epsilon
        if i == 0:  # build_optimizer: group 0 decays (matrices), group 1 never does (norms, biases)
            group["weight_decay"] = params.weight_decay
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


def _describe_changes(changed: dict, auto: dict) -> str:
    """The announcement of the applied changes; a switch left at auto that resolves otherwise on this machine says
    why (``start.resolve_auto``)."""
    return "changed on resume: " + ", ".join(
        f"{k} {_show(a)} -> {_show(b)}" + (f" (auto: {auto[k]['why']})" if k in auto else "")
        for k, (a, b) in changed.items())


def _show(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _describe_weights(before: list[float], now: list[float], names: list[str], step: int) -> str:
    """The announcement of changed data weights (shares of the mixture), applied from the resume step."""
    names = names if len(names) == len(now) else [f"source {k}" for k in range(len(now))]
    parts = ", ".join(f"{n} {a:.3g} -> {b:.3g}" for n, a, b in zip(names, before, now) if abs(a - b) > 1e-9)
    return (f"changed on resume: data_weights {parts} (shares of the mixture; applied from step {step + 1}, "
            "without catching up on the earlier steps)")
