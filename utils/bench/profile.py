"""Where one optimizer step of this trainer spends its time: torch.profiler, ops grouped by kind.

The step is the training loop's own (``utils.train.loop.train_step`` then ``optimizer_step``) on a bench
case, after warm-up steps. Every op's self CPU time is put in one group: matmuls, dtype casts, attention,
the loss (log-softmax + NLL; the head's matmul counts as a matmul), the optimizer (clipping, fused AdamW,
zero_grad), and elementwise/memory ops (norms, activations, rotary, copies, concatenations). Host work is
the rest of the step's wall time: Python, the autograd engine and the dispatcher between ops, packing.
"""
from __future__ import annotations

import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile, record_function

from utils.bench.syncs import SyncCounter, named_counts
from utils.checkpoint.record import RunRecord
from utils.data.shards import load_manifest
from utils.model.modeling import load_model
from utils.parallel.lora import LoraSettings
from utils.sampling.example_store import load_sft_store
from utils.train.cli import RunInputs
from utils.train.config import TrainingParams
from utils.train.loop import optimizer_step, train_step
from utils.train.recipe import Stage, build
from utils.train.run import TrainData, TrainRun
from utils.train.start import ready_to_train

GROUPS = ("matmul", "cast", "attention", "loss", "optimizer", "elementwise", "host")
LABELS = {"matmul": "matmuls (mm, addmm, bmm)", "cast": "dtype casts (_to_copy and its copy_)",
          "attention": "attention (SDPA kernels, forward and backward)",
          "loss": "loss (log-softmax, NLL; head matmul is in matmuls)",
          "optimizer": "optimizer (clip, fused AdamW, zero_grad)",
          "elementwise": "elementwise and memory (norms, SiLU, rotary, add, copies, cat)",
          "host": "host (Python, autograd engine, dispatch, packing)"}
_MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::mv", "aten::addmv", "aten::dot"}
_LOSS = ("log_softmax", "nll_loss", "cross_entropy")
OPTIMIZER_REGION = "optimizer_step"


@dataclass
class StepProfile:
    """Self CPU seconds of one profiled step, per group, and the step's wall time."""

    wall_s: float
    seconds: dict[str, float]
    top_ops: list[tuple[str, float]] = field(default_factory=list)
    syncs: Counter = field(default_factory=Counter)
    """Ops that would make a GPU's host wait, in one more step counted apart (utils/bench/syncs.py)."""
    micro_batches: int = 0

    def syncs_line(self) -> str:
        per = sum(self.syncs.values()) / max(1, self.micro_batches)
        return (f"host-device syncs: {per:.2f} per micro-batch over {self.micro_batches} micro-batch(es) "
                f"({named_counts(self.syncs)})")

    def shares(self) -> dict[str, float]:
        return {g: self.seconds.get(g, 0.0) / self.wall_s for g in GROUPS}

    def table(self) -> str:
        rows = ["| where the time goes | ms | share |", "|---|---:|---:|"]
        for group in GROUPS:
            rows.append(f"| {LABELS[group]} | {1e3 * self.seconds.get(group, 0.0):,.0f} | "
                        f"{100 * self.shares()[group]:.1f}% |")
        rows.append(f"| one optimizer step (wall, under the profiler; mean) | {1e3 * self.wall_s:,.0f} | 100% |")
        return "\n".join(rows)


def group_of(event) -> str | None:
    """The group of one profiler event by its name and ancestors; None for non-op events (regions)."""
    name = event.name
    if not name.startswith("aten::"):
        return None
    ancestors = []
    parent = event.cpu_parent
    while parent is not None:
        ancestors.append(parent.name)
        parent = parent.cpu_parent
    if OPTIMIZER_REGION in ancestors:
        return "optimizer"
    if "scaled_dot_product" in name or any("scaled_dot_product" in a for a in ancestors):
        return "attention"
    if any(key in name for key in _LOSS) or any(any(key in a for key in _LOSS) for a in ancestors):
        return "loss"
    if name in _MATMUL:
        return "matmul"
    if name in ("aten::_to_copy", "aten::_autocast_to_reduced_precision", "aten::_autocast_to_full_precision") \
            or (name == "aten::copy_" and ancestors and ancestors[0] == "aten::_to_copy"):
        return "cast"
    return "elementwise"


def profiled_steps(run: TrainRun, steps: int, activities=(ProfilerActivity.CPU,), synchronize=lambda: None):
    """``steps`` optimizer steps of ``run`` (drawn before the profiler starts) under torch's profiler, the
    forward/backward and the optimizer in regions of their own; returns the profile and the wall seconds, with
    ``synchronize`` called before the clock starts and before it stops."""
    drawn = [run.planner.next_step() for _ in range(steps)]
    synchronize()
    with profile(activities=list(activities)) as prof:
        start = time.perf_counter()
        for batches in drawn:
            with record_function("forward_backward"):
                train_step(run, batches)
            with record_function(OPTIMIZER_REGION):
                optimizer_step(run)
        synchronize()
        wall = time.perf_counter() - start
    return prof, wall


def profile_step(run: TrainRun, warmup: int = 2, steps: int = 1) -> StepProfile:
    """Run ``warmup`` steps, then profile ``steps`` optimizer steps of ``run`` (the loop's own functions);
    the times are per step (the mean over the profiled steps). One more step counts the host-device syncs."""
    for _ in range(warmup):
        train_step(run, run.planner.next_step())
        optimizer_step(run)
    prof, wall = profiled_steps(run, steps)
    total = summarize(prof.events(), wall)
    batches, counter = run.planner.next_step(), SyncCounter()
    with counter:  # apart from the profiled steps: the counter's Python hook would take part of their time
        train_step(run, batches)
        optimizer_step(run)
    acc = run.accelerator
    return StepProfile(wall / steps, {g: s / steps for g, s in total.seconds.items()},
                       [(name, s / steps) for name, s in total.top_ops], counter.by_step.get(0, Counter()),
                       len(batches.for_rank(acc.process_index, acc.num_processes)))


def summarize(events, wall_s: float) -> StepProfile:
    """Group the self CPU time of ``events``; host = wall time not spent inside any op."""
    seconds: dict[str, float] = defaultdict(float)
    per_op: dict[str, float] = defaultdict(float)
    for event in events:
        group = group_of(event)
        if group is None:
            continue
        seconds[group] += event.self_cpu_time_total / 1e6
        per_op[event.name] += event.self_cpu_time_total / 1e6
    seconds["host"] = max(0.0, wall_s - sum(seconds.values()))
    top = sorted(per_op.items(), key=lambda kv: -kv[1])[:12]
    return StepProfile(wall_s, dict(seconds), top)


def run_profile(spec_case, out_dir: Path, warmup: int = 2, steps: int = 1, micro_examples: int | None = None,
                params: dict | None = None) -> StepProfile:
    """Profile one step of this trainer on a bench ``Case`` with the bench's settings for it."""
    return profile_step(bench_run(spec_case, out_dir, warmup + steps, micro_examples, params), warmup, steps)


def bench_run(spec_case, out_dir: Path, max_steps: int, micro_examples: int | None = None,
              params: dict | None = None) -> TrainRun:
    """This trainer's run on a bench ``Case`` with the bench's settings for it, built in this process by the
    training recipe (``recipe.build``: nothing claimed, nothing resumed); ``params`` may set ``micro_batch_tokens``
    (one packed micro-batch per step then) in place of examples."""
    from utils.bench.benchmark import BenchSettings
    from utils.bench.benchmark import micro_examples as micro_examples_of

    params = dict(params or {})
    if params.get("micro_batch_tokens"):
        batching = {"gradient_accumulation_steps": 1}
    else:
        micro = micro_examples_of(spec_case, "ours", BenchSettings(ours_micro=micro_examples))
        batching = {"per_device_train_batch_size": micro,
                    "gradient_accumulation_steps": spec_case.examples_per_step // micro}
    params = TrainingParams(**{"learning_rate": spec_case.learning_rate, "max_steps": max_steps, "warmup_steps": 0,
                               "scheduler": "constant", "adam_beta2": 0.95, "logging_steps": 1, "seed": 1234,
                               **batching, **params})
    stage = _BenchStage(params, RunInputs(tokenizer_path=spec_case.tokenizer_dir, output_dir=out_dir), spec_case)
    return build(stage, stage.start()).run


class _BenchStage(Stage):
    """A bench case as a run of the recipe: its prepared corpus (one source) and model, recorded as the bench's."""

    def __init__(self, params: TrainingParams, inputs: RunInputs, spec_case) -> None:
        super().__init__(params, inputs)
        self.case = spec_case

    def data(self, start, checkpoint, held) -> TrainData:
        data_dir = Path(self.case.data_dir)
        store = load_sft_store(data_dir, "train", load_manifest(data_dir))
        return TrainData([store], [1.0], [], int(store.lengths.max()))

    def model(self, start):
        lora = LoraSettings(**self.case.lora) if self.case.lora else None
        model, _ = ready_to_train(load_model(self.case.model_dir), lora, self.params, self.case.model_dir)
        return model, RunRecord(data_hashes="bench", tokenizer_sha256="bench")
