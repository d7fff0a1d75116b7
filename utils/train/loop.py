"""The one training loop, shared by pre-training/CPT (01) and SFT (03).

Each optimizer step: take this rank's micro-batches of the step the planner drew (drawn and
packed ahead on a thread, ``utils/sampling/prefetch.py``) →
forward/backward (gradients synchronised on the last one) → clip → optimizer and
scheduler step → log (the only host synchronisation) → evaluate / checkpoint.
The loss of every micro-batch is divided by the supervised tokens of the WHOLE step
(all micro-batches, all ranks), known in advance from the draw, so the update does not
depend on how the step is split: batch 8 x accumulation 1 == batch 2 x accumulation 4.
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch.distributed.tensor import DTensor
from tqdm import tqdm

from utils.checkpoint.checkpoints import load_checkpoint_weights, save_checkpoint
from utils.checkpoint.record import TrainingState
from utils.common.errors import Stopped, UserError
from utils.common.labels import perplexity
from utils.model.compiled import CompileStats
from utils.model.loss import loss_record, loss_sums, router_of
from utils.monitor.trackers import RunLogger
from utils.parallel.fsdp import local, set_gradient_sync
from utils.parallel.state_dict import unwrap_lm
from utils.sampling.packing import PackedBatch, greedy_bins
from utils.sampling.planner import StepBatches
from utils.sampling.prefetch import Prefetcher, collate
from utils.train.config import TrainingParams
from utils.train.preemption import StopSignals, signal_name
from utils.train.run import TrainRun


@dataclass
class TrainState:
    """Where the run is: what a checkpoint saves (``checkpointed``) and a resume reads back (``resumed``)."""

    step: int = 0
    tokens_seen: int = 0
    supervised_seen: int = 0
    loss_history: list[float] = field(default_factory=list)
    last_eval: dict = field(default_factory=dict)
    best_step: int = 0
    """load_best_model_at_end: the saved step with the lowest eval/loss so far (0: none yet)."""
    best_eval_loss: float | None = None
    initial_eval: dict = field(default_factory=dict)
    """The evaluation before the first step (not saved: a resumed run has none)."""
    planner_state: dict | None = None
    """The step planner's state after this state's step was drawn (None: the planner's own, nothing drawn ahead)."""

    def checkpointed(self, run: TrainRun) -> TrainingState:
        """What a checkpoint's training_state.json holds: this state, the sampler position and the run's record."""
        return TrainingState(step=self.step, tokens_seen=self.tokens_seen, supervised_seen=self.supervised_seen,
                             loss_history=self.loss_history, planner=self.planner_state or run.planner.state_dict(),
                             last_eval=self.last_eval, best_step=self.best_step, best_eval_loss=self.best_eval_loss,
                             total_steps=run.total_steps, world_size=run.accelerator.num_processes,
                             record=run.record.to_json())

    @classmethod
    def resumed(cls, saved: TrainingState) -> TrainState:
        """The state a checkpoint saved (``checkpointed``)."""
        return cls(step=saved.step, tokens_seen=saved.tokens_seen, supervised_seen=saved.supervised_seen,
                   loss_history=saved.loss_history, last_eval=saved.last_eval, best_step=saved.best_step,
                   best_eval_loss=saved.best_eval_loss)


def train_step(run: TrainRun, batches: StepBatches, packed: Iterable[PackedBatch] | None = None) -> torch.Tensor:
    """Forward/backward over this rank's micro-batches (``packed``: already packed, else packed here); returns the
    local loss sum and router auxiliary loss sum (an MoE model's; 0 otherwise), without a sync."""
    acc = run.accelerator
    my_bins = batches.for_rank(acc.process_index, acc.num_processes)
    scale = acc.num_processes / max(1, batches.num_supervised)  # DDP averages over ranks
    local = torch.zeros(2, device=acc.device)
    if packed is None:
        packed = (collate(run.stores, items) for items in my_bins)
    for i, host in enumerate(packed):
        batch = host.to(acc.device, pin=run.pin_memory)
        last = i == len(my_bins) - 1
        sync = contextlib.nullcontext() if last else acc.no_sync(run.loss_module)  # DDP
        set_gradient_sync(run.loss_module, last)  # FSDP2: reduce-scatter on the last micro-batch only
        with sync, acc.autocast():
            objective, parts = run.loss_module(*batch.loss_inputs())
        acc.backward(objective * scale)
        local += parts[-2:]
    return local


def optimizer_step(run: TrainRun) -> torch.Tensor:
    acc = run.accelerator
    grad_norm = torch.zeros((), device=acc.device)
    if run.params.max_grad_norm > 0:
        grad_norm = acc.clip_grad_norm_(run.loss_module.parameters(), run.params.max_grad_norm)
        if isinstance(grad_norm, DTensor):  # the norm over every rank's shard (one scalar)
            grad_norm = grad_norm.full_tensor()
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return grad_norm


def evaluate(run: TrainRun) -> dict:
    """Token-weighted validation loss and perplexity, overall and per source."""
    acc = run.accelerator
    run.loss_module.eval()
    sums, counts = loss_sums(run.loss_module, _my_val_batches(run), len(run.val_stores), acc.device, acc.autocast)
    run.loss_module.train()
    sums, counts = acc.reduce(sums, "sum"), acc.reduce(counts, "sum")
    return _eval_record(run.val_stores, sums.tolist(), counts.tolist())


def _my_val_batches(run: TrainRun) -> Iterator[PackedBatch]:
    """This rank's share of the validation micro-batches. Sharded, every rank runs as many forwards as the busiest
    (each forward all-gathers the weights): a rank short of one adds a batch with no targets."""
    acc = run.accelerator
    bins = list(_val_bins(run.val_stores, run.params.micro_batch_tokens or 0, run.params))
    mine = bins[acc.process_index::acc.num_processes]
    for items in mine:
        yield collate(run.val_stores, items)
    if run.sharded:
        for _ in range(-(-len(bins) // acc.num_processes) - len(mine)):
            batch = collate(run.val_stores, bins[0])
            yield batch.without_targets()


def _val_bins(stores, budget: int, params: TrainingParams):
    """Validation examples in a fixed order, packed greedily into micro-batches (evaluation's packer)."""
    items = [(s, i) for s, store in enumerate(stores) for i in range(len(store))]
    lengths = [length for store in stores for length in store.lengths.tolist()]
    for group in greedy_bins(lengths, budget, params.per_device_train_batch_size, params.eval_max_batches):
        yield [items[k] for k in group]


def _eval_record(stores, sums: list[float], counts: list[float]) -> dict:
    """The validation loss record (``loss_record``, the one evaluation reports) under the log's eval/ keys."""
    record, logged = loss_record([store.name for store in stores], sums, counts), {}
    for name, part in record["per_source"].items():
        logged[f"eval/{name}/loss"], logged[f"eval/{name}/ppl"] = part["loss"], part["ppl"]
    if record["loss"] is not None:
        logged.update({"eval/loss": record["loss"], "eval/ppl": record["ppl"], "eval/tokens": record["tokens"]})
    return logged


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
        if p.requires_grad:  # this rank's shard of a sharded weight: the ranks together check them all
            bad += (~torch.isfinite(local(p).detach())).sum()
    if acc.reduce(bad, "sum").item():
        raise UserError(
            f"weights became NaN or inf at step {step}: training stopped before writing a checkpoint; the "
            f"last good checkpoint in {run.output_dir} is kept. Lower learning_rate, keep max_grad_norm > 0, "
            "or use bf16 instead of fp16")


def fit(run: TrainRun, state: TrainState) -> TrainState:
    """Evaluate once before the first step, then run from ``state.step`` to ``run.total_steps``; returns the final
    state. Metrics go to the trackers of report_to, progress to a bar on the main process.

    SIGTERM/SIGINT end the step in progress, write its checkpoint and raise Stopped (exit 143/130).
    """
    acc = run.accelerator
    logger = RunLogger(acc, state.step, run.record.config)
    compiled = CompileStats.now() if run.params.compile else None
    try:
        with _out_of_memory_hint():
            if run.val_stores and state.step == 0:
                state.initial_eval = evaluate(run)
            bar = tqdm(total=run.total_steps, initial=state.step, desc=run.label, disable=not acc.is_main_process)
            feed = Prefetcher(run.planner, run.stores, run.total_steps - state.step, acc.process_index,
                              acc.num_processes, pin=run.pin_memory)
            with bar as progress, StopSignals() as signals, feed:
                return _fit(run, state, signals, _Window(run, logger, progress), feed)
    finally:
        logger.close()
        if compiled is not None and acc.is_main_process:
            print(f"torch.compile: {CompileStats.now().since(compiled).describe()}", flush=True)


def _fit(run: TrainRun, state: TrainState, signals: StopSignals, window: _Window, feed: Prefetcher) -> TrainState:
    acc, params = run.accelerator, run.params
    run.loss_module.train()
    while state.step < run.total_steps:
        fetched = feed.next_step()
        batches, state.planner_state = fetched.batches, fetched.planner_state
        window.add(train_step(run, batches, fetched.micro_batches), batches)
        grad_norm = optimizer_step(run)
        state.step += 1
        state.tokens_seen += batches.num_tokens
        state.supervised_seen += batches.num_supervised
        window.progress.update(1)
        at_end = state.step == run.total_steps
        if state.step % params.logging_steps == 0 or at_end or _due(state.step, params.save_steps):
            window.flush(state, grad_norm)
        evaluated = _due(state.step, params.eval_steps) or at_end
        if evaluated:
            state.last_eval = {**evaluate(run), **(run.on_eval(run, state.step) if run.on_eval else {})}
            window.logger.log({"step": state.step, **state.last_eval})
        saved = _due(state.step, params.save_steps) or at_end
        if saved:
            _save(run, state, evaluated)
        signum = signals.agreed(acc)
        if signum:
            if window.pending:
                window.flush(state, grad_norm)
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
    if run.params.load_best_model_at_end and evaluated:
        _track_best(state)
    save_checkpoint(run.accelerator, run.output_dir, state.step, run.loss_module, run.optimizer,
                    run.scheduler, state.checkpointed(run), run.params.save_total_limit,
                    keep=state.best_step or None)


def _track_best(state: TrainState) -> None:
    loss = state.last_eval.get("eval/loss")
    if loss is not None and (state.best_eval_loss is None or loss < state.best_eval_loss):
        state.best_step, state.best_eval_loss = state.step, loss


def restore_best(run: TrainRun, state: TrainState) -> None:
    """Put the best checkpoint's weights into the model (optimizer state stays: training is over)."""
    if not state.best_step or state.best_step == state.step:
        return
    path = run.output_dir / f"checkpoint-{state.best_step}"
    load_checkpoint_weights(run.accelerator, path, run.loss_module)
    if run.accelerator.is_main_process:
        print(f"load_best_model_at_end: final/ gets checkpoint-{state.best_step} "
              f"(eval/loss {state.best_eval_loss:.4f}), not step {state.step} "
              f"(eval/loss {state.last_eval.get('eval/loss', float('nan')):.4f})", flush=True)


def _due(step: int, every: int) -> bool:
    return every > 0 and step % every == 0


class _Window:
    """The steps since the last log line: their loss sums stay on the device until ``flush`` (the only sync)."""

    def __init__(self, run: TrainRun, logger: RunLogger, progress) -> None:
        self.run, self.logger, self.progress = run, logger, progress
        self.pending: list[tuple[torch.Tensor, int]] = []  # (local loss and aux sums, step supervised tokens)
        self.routed = router_of(unwrap_lm(run.accelerator, run.loss_module)) is not None
        self.start, self.tokens = time.perf_counter(), 0

    def add(self, loss_sum: torch.Tensor, batches: StepBatches) -> None:
        self.pending.append((loss_sum, batches.num_supervised))
        self.tokens += batches.num_tokens

    def flush(self, state: TrainState, grad_norm: torch.Tensor) -> None:
        run = self.run
        tokens_per_s = self.tokens / max(time.perf_counter() - self.start, 1e-9)
        sums = run.accelerator.reduce(torch.stack([p[0] for p in self.pending]), "sum").tolist()
        losses = [s[0] / max(1, p[1]) for s, p in zip(sums, self.pending)]
        routed = {"router_aux_loss": sums[-1][1] / max(1, self.pending[-1][1])} if self.routed else {}
        _check_finite(losses, state.step - len(losses) + 1, run.output_dir)
        state.loss_history.extend(losses)
        self.logger.log({
            "step": state.step, "loss": losses[-1], "lr": run.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm), "tokens": state.tokens_seen,
            "supervised_tokens": state.supervised_seen, "tokens_per_s": tokens_per_s,
            "elapsed_s": time.perf_counter() - run.start_time,
            "process_cpu_s": time.process_time(),  # with elapsed_s: how much of the wall time was ours
            **routed,
        })
        self.progress.set_postfix(loss=f"{losses[-1]:.4f}", tok_s=f"{tokens_per_s:,.0f}")
        self.pending, self.start, self.tokens = [], time.perf_counter(), 0


@contextlib.contextmanager
def _out_of_memory_hint():
    """Out of memory (CUDA, or the CPU's allocator) ends in one line saying what to lower."""
    try:
        yield
    except (torch.OutOfMemoryError, RuntimeError) as err:
        if not isinstance(err, torch.OutOfMemoryError) and "can't allocate memory" not in str(err) \
                and "out of memory" not in str(err):
            raise
        raise UserError("out of memory: lower training_params.micro_batch_tokens (or "
                        "per_device_train_batch_size), turn on gradient_checkpointing, or lower "
                        "lora_config.r") from None
