"""The one training loop, shared by pre-training/CPT (01) and SFT (03).

Each optimizer step: take this rank's micro-batches of the global step plan →
forward/backward (gradients synchronised on the last one) → clip → optimizer and
scheduler step → log (the only host synchronisation) → evaluate / checkpoint.
The loss of every micro-batch is divided by the supervised tokens of the WHOLE step
(all micro-batches, all ranks), known in advance from the plan, so the update does not
depend on how the step is split: batch 8 x accumulation 1 == batch 2 x accumulation 4.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from utils.checkpoint.checkpoints import save_checkpoint
from utils.common.errors import Stopped, UserError
from utils.common.labels import perplexity
from utils.model.loss import loss_sums
from utils.model.modeling import load_weights_into
from utils.parallel.state_dict import unwrap_lm
from utils.sampling.example_store import ExampleStore
from utils.sampling.packing import PackedBatch, pack
from utils.sampling.planner import StepPlanner
from utils.train.params import TrainingParams
from utils.train.preemption import StopSignals, signal_name


@dataclass
class TrainState:
    """What a checkpoint needs to continue exactly where the run stopped."""

    step: int = 0
    tokens_seen: int = 0
    supervised_seen: int = 0
    loss_history: list[float] = field(default_factory=list)
    planner: dict = field(default_factory=dict)
    last_eval: dict = field(default_factory=dict)
    best_step: int = 0
    """load_best_model_at_end: the saved step with the lowest eval/loss so far (0: none yet)."""
    best_eval_loss: float | None = None


@dataclass
class TrainRun:
    """Everything the loop touches, wired by a stage script."""

    accelerator: object
    loss_module: torch.nn.Module          # SupervisedLoss, prepared by accelerate
    optimizer: torch.optim.Optimizer      # prepared by accelerate
    scheduler: torch.optim.lr_scheduler.LambdaLR
    planner: StepPlanner
    stores: list[ExampleStore]
    val_stores: list[ExampleStore]
    params: TrainingParams
    total_steps: int
    output_dir: Path
    logger: object
    run_info: dict                         # saved into training_state.json of each checkpoint
    start_time: float                      # time.perf_counter() at set-up: metrics' elapsed_s counts from it
    on_eval: Callable[[int], dict] | None = None   # e.g. generation samples
    progress: object = None


def collate(stores: list[ExampleStore], items: list[tuple[int, int]]) -> PackedBatch:
    return pack([(*stores[s].get(i), s) for s, i in items])


def train_step(run: TrainRun, plan) -> torch.Tensor:
    """Forward/backward over this rank's micro-batches; returns the local loss sum (no sync)."""
    acc = run.accelerator
    my_bins = plan.for_rank(acc.process_index, acc.num_processes)
    scale = acc.num_processes / max(1, plan.num_supervised)  # DDP averages over ranks
    local = torch.zeros((), device=acc.device)
    for i, items in enumerate(my_bins):
        batch = collate(run.stores, items).to(acc.device)
        last = i == len(my_bins) - 1
        sync = contextlib.nullcontext() if last else acc.no_sync(run.loss_module)
        with sync, acc.autocast():
            loss_sum, _ = run.loss_module(batch.input_ids, batch.position_ids, batch.targets, batch.source_ids,
                                             batch.cu_seq_lens)
        acc.backward(loss_sum * scale)
        local += loss_sum.detach()
    return local


def optimizer_step(run: TrainRun) -> torch.Tensor:
    acc = run.accelerator
    grad_norm = torch.zeros((), device=acc.device)
    if run.params.max_grad_norm > 0:
        grad_norm = acc.clip_grad_norm_(run.loss_module.parameters(), run.params.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def evaluate(run: TrainRun) -> dict:
    """Token-weighted validation loss and perplexity, overall and per source."""
    acc = run.accelerator
    bins = _val_bins(run.val_stores, run.params.micro_batch_tokens or 0, run.params)
    mine = (collate(run.val_stores, items) for j, items in enumerate(bins)
            if j % acc.num_processes == acc.process_index)
    run.loss_module.eval()
    sums, counts = loss_sums(run.loss_module, mine, len(run.val_stores), acc.device, acc.autocast)
    run.loss_module.train()
    sums, counts = acc.reduce(sums, "sum"), acc.reduce(counts, "sum")
    return _eval_record(run.val_stores, sums.tolist(), counts.tolist())


def _val_bins(stores, budget: int, params: TrainingParams):
    """Validation examples in a fixed order, packed greedily into micro-batches."""
    per_bin = params.per_device_train_batch_size
    current, used, made = [], 0, 0
    for s, store in enumerate(stores):
        for i, length in enumerate(store.lengths.tolist()):
            full = len(current) == per_bin if per_bin else used + length > budget
            if current and full:
                yield current
                made += 1
                if params.eval_max_batches and made >= params.eval_max_batches:
                    return
                current, used = [], 0
            current.append((s, i))
            used += length
    if current:
        yield current


def _eval_record(stores, sums: list[float], counts: list[float]) -> dict:
    record = {}
    for store, total, n in zip(stores, sums, counts):
        if n:
            record[f"eval/{store.name}/loss"] = total / n
            record[f"eval/{store.name}/ppl"] = perplexity(total / n)
    if sum(counts):
        record["eval/loss"] = sum(sums) / sum(counts)
        record["eval/ppl"] = perplexity(record["eval/loss"])
        record["eval/tokens"] = int(sum(counts))
    return record


def _check_finite(losses: list[float], first_step: int, output_dir: Path) -> None:
    for offset, value in enumerate(losses):
        if not math.isfinite(value):
            raise UserError(
                f"loss is {value} at step {first_step + offset}: training stopped; the last good "
                f"checkpoint in {output_dir} is kept. Lower learning_rate, keep max_grad_norm > 0, "
                "or use bf16 instead of fp16")


def _check_weights_finite(run: TrainRun, step: int) -> None:
    """Never checkpoint NaN/inf weights: a step's loss is measured before its update, so it can't tell."""
    acc = run.accelerator
    bad = torch.zeros((), device=acc.device)
    for p in run.loss_module.parameters():
        if p.requires_grad:
            bad += (~torch.isfinite(p.detach())).sum()
    if acc.reduce(bad, "sum").item():
        raise UserError(
            f"weights became NaN or inf at step {step}: training stopped before writing a checkpoint; the "
            f"last good checkpoint in {run.output_dir} is kept. Lower learning_rate, keep max_grad_norm > 0, "
            "or use bf16 instead of fp16")


def fit(run: TrainRun, state: TrainState) -> TrainState:
    """Run from ``state.step`` to ``run.total_steps``; returns the final state.

    SIGTERM/SIGINT end the step in progress, write its checkpoint and raise Stopped (exit 143/130).
    """
    with StopSignals() as signals:
        return _fit(run, state, signals)


def _fit(run: TrainRun, state: TrainState, signals: StopSignals) -> TrainState:
    acc, params = run.accelerator, run.params
    run.loss_module.train()
    pending: list[tuple[torch.Tensor, int, int]] = []  # (local loss sum, step supervised, step tokens)
    window_start, window_tokens = time.perf_counter(), 0
    while state.step < run.total_steps:
        plan = run.planner.next_step()
        pending.append((train_step(run, plan), plan.num_supervised, plan.num_tokens))
        grad_norm = optimizer_step(run)
        state.step += 1
        state.tokens_seen += plan.num_tokens
        state.supervised_seen += plan.num_supervised
        window_tokens += plan.num_tokens
        if run.progress is not None:
            run.progress.update(1)
        at_end = state.step == run.total_steps
        if state.step % params.logging_steps == 0 or at_end or _due(state.step, params.save_steps):
            elapsed = time.perf_counter() - window_start
            _flush_losses(run, state, pending, grad_norm, window_tokens / max(elapsed, 1e-9))
            pending, window_start, window_tokens = [], time.perf_counter(), 0
        evaluated = _due(state.step, params.eval_steps) or at_end
        if evaluated:
            state.last_eval = {**evaluate(run), **(run.on_eval(state.step) if run.on_eval else {})}
            run.logger.log({"step": state.step, **state.last_eval})
        saved = _due(state.step, params.save_steps) or at_end
        if saved:
            _save(run, state, evaluated)
        signum = signals.agreed(acc)
        if signum:
            if pending:
                elapsed = time.perf_counter() - window_start
                _flush_losses(run, state, pending, grad_norm, window_tokens / max(elapsed, 1e-9))
            if not saved:
                _save(run, state, evaluated)
            raise Stopped(f"{signal_name(signum)} received: finished step {state.step} of {run.total_steps} and wrote "
                          f"{run.output_dir / f'checkpoint-{state.step}'}; continue with "
                          "--resume_from_checkpoint auto" if acc.is_main_process else "", signum)
    if params.load_best_model_at_end:
        restore_best(run, state)
    return state


def _save(run: TrainRun, state: TrainState, evaluated: bool) -> None:
    _check_weights_finite(run, state.step)
    state.planner = run.planner.state_dict()
    if run.params.load_best_model_at_end and evaluated:
        _track_best(state)
    save_checkpoint(run.accelerator, run.output_dir, state.step, run.loss_module, run.optimizer,
                    run.scheduler, _state_json(run, state), run.params.save_total_limit,
                    keep=state.best_step or None)


def _track_best(state: TrainState) -> None:
    loss = state.last_eval.get("eval/loss")
    if loss is not None and (state.best_eval_loss is None or loss < state.best_eval_loss):
        state.best_step, state.best_eval_loss = state.step, loss


def best_record(state: TrainState, params: TrainingParams) -> dict | None:
    """What the training summary says about load_best_model_at_end (None when it is off)."""
    if not params.load_best_model_at_end:
        return None
    return {"step": state.best_step, "eval_loss": state.best_eval_loss, "last_step": state.step}


def restore_best(run: TrainRun, state: TrainState) -> None:
    """Put the best checkpoint's weights into the model (optimizer state stays: training is over)."""
    if not state.best_step or state.best_step == state.step:
        return
    path = run.output_dir / f"checkpoint-{state.best_step}"
    load_weights_into(unwrap_lm(run.accelerator, run.loss_module), path)
    if run.accelerator.is_main_process:
        print(f"load_best_model_at_end: final/ gets checkpoint-{state.best_step} "
              f"(eval/loss {state.best_eval_loss:.4f}), not step {state.step} "
              f"(eval/loss {state.last_eval.get('eval/loss', float('nan')):.4f})", flush=True)


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


def _flush_losses(run: TrainRun, state: TrainState, pending, grad_norm, tokens_per_s: float) -> None:
    sums = run.accelerator.reduce(torch.stack([p[0] for p in pending]), "sum").tolist()
    losses = [s / max(1, p[1]) for s, p in zip(sums, pending)]
    _check_finite(losses, state.step - len(losses) + 1, run.output_dir)
    state.loss_history.extend(losses)
    run.logger.log({
        "step": state.step, "loss": losses[-1], "lr": run.scheduler.get_last_lr()[0],
        "grad_norm": float(grad_norm), "tokens": state.tokens_seen,
        "supervised_tokens": state.supervised_seen, "tokens_per_s": tokens_per_s,
        "elapsed_s": time.perf_counter() - run.start_time,
        "process_cpu_s": time.process_time(),  # with elapsed_s: how much of the wall time was ours
    })
    if run.progress is not None:
        run.progress.set_postfix(loss=f"{losses[-1]:.4f}", tok_s=f"{tokens_per_s:,.0f}")


def _state_json(run: TrainRun, state: TrainState) -> dict:
    return {"step": state.step, "tokens_seen": state.tokens_seen, "supervised_seen": state.supervised_seen,
            "loss_history": state.loss_history, "planner": state.planner, "last_eval": state.last_eval,
            "best_step": state.best_step, "best_eval_loss": state.best_eval_loss,
            "total_steps": run.total_steps, "world_size": run.accelerator.num_processes, **run.run_info}
