"""``make bench-gpu-quick`` (``scripts/benchmark_gpu.py --quick``): the GPU figures in one call of at most 4
minutes on one H100, the main job left out (``make bench-gpu GPU_ARGS="--checks demo"`` runs it on its own).

In order: ``varlen`` (utils/bench/gpu_model.py: Llama and Qwen2 models, a packed row against its examples alone,
forward and backward under bf16 autocast, and the kernel's time on bare tensors); ``syncs``, ``profile`` and
``tokens`` (utils/bench/gpu_profile.py, on this trainer's run of the base preset at 1,024-token examples, built in
this process); then ``throughput`` (this trainer against TRL padding-free bf16, base preset, 6 steps of 256
examples of which 3 timed, no SmolLM2), ``resume`` (SIGKILL after a checkpoint, resume) and ``fsdp2`` (the
same under ``accelerate launch`` with FSDP2), each on 10 steps. The corpora and weights live in ``--data_dir``
(default data/bench_gpu): made by the first call, reused by every later one. A check that finds the time
limit spent is recorded as not run.
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Callable

import torch

from utils.bench.gpu import LAUNCHERS, check_resume, check_throughput
from utils.bench.gpu_model import check_varlen_models
from utils.bench.gpu_profile import (MICRO_TOKENS, check_syncs, profile_line, profile_split, size_name,
                                     tokens_line, tokens_per_second)
from utils.bench.gpu_runner import Budget, Check
from utils.bench.scaling import ROOT

QUICK_CHECKS = ("varlen", "syncs", "profile", "tokens", "throughput", "resume", "fsdp2")
QUICK_LIMIT = 240
DATA_DIR = ROOT / "data" / "bench_gpu"
PROFILE_MICRO_TOKENS = 16384
THROUGHPUT_STEPS = 6
RESUME_STEPS, RESUME_SAVE = 10, 4

MakeRun = Callable[[str, dict, int], object]
"""(name, training_params on top, max_steps) -> this trainer's run (utils.train.run.TrainRun)."""


def base_case_runs(data: Path, work: Path) -> MakeRun:
    """Runs of the base preset at 1,024 tokens on the bench corpus in ``data`` (prepared on first use)."""
    from utils.bench.benchmark import BenchSettings, build_cases
    from utils.bench.profile import bench_run

    case = functools.lru_cache(maxsize=1)(
        lambda: build_cases(BenchSettings(sizes=["base"], seqs=[1024], work_dir=data))[0][0])
    return lambda name, params, steps: bench_run(case(), work / name, steps, params=params)


def check_profile(make_run: MakeRun, micro_tokens: int = PROFILE_MICRO_TOKENS, steps: int = 2) -> Check:
    split = profile_split(make_run("profile", {"micro_batch_tokens": micro_tokens}, steps + 1), steps)
    busy = split["step"] - split["idle"]
    return Check("profile", busy > 0, f"{size_name(micro_tokens)} micro-batch: {profile_line(split)}", split)


def check_tokens(make_run: MakeRun, sizes=MICRO_TOKENS, steps: int = 3, warmup: int = 2) -> Check:
    """Tokens/s at each micro-batch size; one that runs out of GPU memory is recorded as such."""
    figures = {}
    for micro in sizes:
        try:
            figures[micro] = tokens_per_second(make_run(f"tokens_{micro}", {"micro_batch_tokens": micro},
                                                        warmup + steps), steps, warmup)
        except torch.OutOfMemoryError:
            figures[micro] = {"error": "out of GPU memory"}
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    lines = [tokens_line(micro, f) for micro, f in figures.items()]
    return Check("tokens", all("error" not in f for f in figures.values()), "; ".join(lines),
                 {str(k): v for k, v in figures.items()})


def quick_checks(work: Path, budget: Budget, data: Path = DATA_DIR, make_run: MakeRun | None = None,
                 device: str = "cuda", micro_tokens: int = PROFILE_MICRO_TOKENS) -> dict[str, Callable[[], Check]]:
    """Each check of the quick bench by name, ready to run (the syncs and the profile at ``micro_tokens`` per
    micro-batch)."""
    make_run = make_run or base_case_runs(data, work)
    resume = {name: (lambda name=name: check_resume(work, LAUNCHERS[name], name, budget, RESUME_STEPS,
                                                    RESUME_SAVE, data / "resume"))
              for name in LAUNCHERS}
    return {"varlen": lambda: check_varlen_models(device),
            "syncs": lambda: check_syncs(make_run("syncs", {"micro_batch_tokens": micro_tokens}, 5)),
            "profile": lambda: check_profile(make_run, micro_tokens),
            "tokens": lambda: check_tokens(make_run),
            "throughput": lambda: check_throughput(work, THROUGHPUT_STEPS, budget, data / "throughput",
                                                   smollm2=False),
            **resume}
