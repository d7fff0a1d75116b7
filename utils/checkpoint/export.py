"""Export: a training stage's final/ (LoRA adapter or full model) -> one standalone HF model directory.

The export holds merged safetensors weights (bfloat16 unless ``--dtype`` or an fp16 run says otherwise), the
tokenizer files with the chat template that renders what training rendered (``utils/data/chat_jinja.py``; a
tokenizer that already renders it keeps its files byte for byte, and its fingerprint), the generation config
with the template's stop ids, a model card (README.md, with the Hub's YAML front matter) and, for provenance,
training_summary.json and eval_report.json. It loads with plain ``AutoModelForCausalLM`` / ``AutoTokenizer``:
no peft, no code from this repository. ``--gguf`` adds GGUF files and an Ollama Modelfile
(``utils/checkpoint/gguf_export.py``), written and checked before anything is published.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch

from utils.checkpoint.gguf_export import check_convertible, converter_dir, export_gguf
from utils.checkpoint.hub import hub_id_of
from utils.checkpoint.model_card import CardFacts, data_sources, model_card
from utils.common.errors import UserError
from utils.common.locks import exclusive, recover_published
from utils.common.publish import atomic_dir, check_owner, refuse_inside
from utils.data.chat_jinja import write_trained_template
from utils.data.tokenizer import copy_tokenizer_files
from utils.model.modeling import load_model
from utils.parallel.quantization import load_base

ADAPTER_CONFIG = "adapter_config.json"
SUMMARY = "training_summary.json"
EVAL_REPORT = "eval_report.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
RELOAD_TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "bfloat16": 5e-2}
"""Largest |logit| difference the reload check accepts, relative to the largest |logit| (at least 1), scaled to
the precision of the saved weights: in bfloat16 a real model's 30 layers round differently when the reloaded
copy takes another attention implementation (SmolLM2-135M: 0.73 on logits near 20), while a lost weight moves
logits by their own size."""


@dataclass
class ExportOptions:
    """What scripts/05_export_model.py was asked (one field per flag; its --help says what each means)."""

    eval_report: str | None = None
    base_model_path: str | None = None
    dtype: str = "auto"
    gguf: list[str] = field(default_factory=list)
    base_model_id: str | None = None
    license: str | None = None


@dataclass
class FinalDir:
    """What a final/ directory holds, read before any weights are loaded."""

    path: Path
    summary: dict
    adapter_config: dict | None
    """None for a full (or already merged) model."""


@dataclass
class ExportResult:
    output_dir: Path
    base_model: str | None
    """The base the adapter was merged into; None when final/ was a full model."""
    eval_report: Path | None
    max_logit_diff: float | None
    """Largest |logit| difference between the in-memory model and the reloaded export."""
    quantization: dict | None = None
    """The 4-bit settings whose dequantized base the adapter was merged into (QLoRA); None otherwise."""
    dtype: str = "float32"
    dtype_reason: str = ""
    base_id: str | None = None
    """The base's Hub id in the card (None: not known)."""
    template_written: bool = False
    """True when the tokenizer's chat_template was replaced by the trained one."""
    gguf: list = field(default_factory=list)
    """utils.checkpoint.gguf_export.GGUFFile of each GGUF written."""


def read_final(model_path: str | Path) -> FinalDir:
    """Check ``model_path`` is a final/ directory and read its adapter config and training summary."""
    path = Path(model_path)
    recover_published(path)
    if not path.is_dir():
        raise UserError(f"{path}: model directory not found; train one first (e.g. `make sft-train-tiny`) "
                        "or pass the final/ directory of a training run")
    adapter = _read_json(path / ADAPTER_CONFIG) if (path / ADAPTER_CONFIG).is_file() else None
    if adapter is None and not (path / "config.json").is_file():
        raise UserError(f"{path}: neither {ADAPTER_CONFIG} nor config.json here; pass the final/ directory "
                        "of a training run")
    summary = _read_json(path / SUMMARY) if (path / SUMMARY).is_file() else {}
    return FinalDir(path, summary, adapter)


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: unreadable JSON ({err}); re-run the stage that wrote it") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def base_candidates(final: FinalDir, override: str | None) -> list[str]:
    """Where the adapter's base may be, most specific first."""
    if override:
        return [override]
    named = [final.adapter_config.get("base_model_name_or_path"), final.summary.get("model_path")]
    return list(dict.fromkeys(n for n in named if n))


def resolve_base(final: FinalDir, override: str | None) -> str:
    """The first base candidate present on disk (a hub name is tried as given only when nothing is)."""
    candidates = base_candidates(final, override)
    if not candidates:
        raise UserError(f"{final.path / ADAPTER_CONFIG}: names no base model; pass --base_model_path")
    for candidate in candidates:
        if Path(candidate).exists():
            return candidate
    if override:
        raise UserError(f"--base_model_path {override}: not found; pass the model directory or .gguf file "
                        "the adapter was trained on")
    hub_like = [c for c in candidates if not c.startswith((".", "/", "~")) and c.count("/") == 1]
    if hub_like:
        return hub_like[0]
    raise UserError(f"{final.path / ADAPTER_CONFIG}: base model {candidates[0]} not found (it may have moved); "
                    "pass --base_model_path with the model the adapter was trained on")


def load_merged(final: FinalDir, base: str):
    """The base with the adapter merged in (peft ``merge_and_unload``), as a plain transformers model."""
    from peft import PeftModel

    if (Path(base) / ADAPTER_CONFIG).is_file() and not (Path(base) / "config.json").is_file():
        raise UserError(f"base model {base}: this is a LoRA adapter, not a model; pass --base_model_path "
                        "with the model the adapter was trained on")
    try:
        model = load_base(base, quantization(final), dequantize=True)
    except UserError as err:
        raise UserError(f"{err}; pass --base_model_path with the model the adapter was trained on") from None
    try:
        peft_model = PeftModel.from_pretrained(model, str(final.path))
    except (RuntimeError, ValueError, KeyError) as err:
        lines = [ln.strip() for ln in str(err).splitlines() if ln.strip()] or [type(err).__name__]
        detail = next((ln for ln in lines if "size mismatch" in ln), lines[0])[:300]
        raise UserError(f"{final.path}: the adapter does not fit base {base} ({detail}); "
                        "pass --base_model_path with the model it was trained on") from None
    return peft_model.merge_and_unload()


def quantization(final: FinalDir) -> dict | None:
    """The quantization block the adapter was trained with (QLoRA), from training_summary.json; else None."""
    config = final.summary.get("config")
    saved = config.get("quantization") if isinstance(config, dict) else None
    return saved if isinstance(saved, dict) else None


def find_eval_report(model_path: Path, explicit: str | None) -> Path | None:
    """--eval_report (a file or a dir holding eval_report.json), else <model_path>/../eval/eval_report.json."""
    if explicit:
        path = Path(explicit)
        path = path / EVAL_REPORT if path.is_dir() else path
        if not path.is_file():
            raise UserError(f"--eval_report {explicit}: not found; pass the eval_report.json the evaluation "
                            "stage wrote, or leave it out")
        return path
    default = model_path.parent / "eval" / EVAL_REPORT
    return default if default.is_file() else None


def export_model(model_path: str | Path, output_dir: str | Path, options: ExportOptions | None = None,
                 **flags) -> ExportResult:
    """Merge (or re-save) ``model_path`` into a standalone HF directory at ``output_dir``, atomically; ``flags``
    are ExportOptions fields."""
    options = options or ExportOptions(**flags)
    final = read_final(model_path)
    out = Path(output_dir)
    report = find_eval_report(final.path, options.eval_report)
    base = resolve_base(final, options.base_model_path) if final.adapter_config else None
    refuse_inside(out, {"--model_path": final.path, "the base model": base})
    llama_cpp = gguf_tools(options.gguf)  # a missing converter is said before any work
    with exclusive(out):
        check_owner(out, "export")  # before the merge, not after
        return _export(final, base, report, out, options, llama_cpp)


def gguf_tools(types: list[str]) -> Path | None:
    """llama.cpp's converter directory when GGUF files are asked for."""
    return converter_dir() if types else None


def export_dtype(final: FinalDir, asked: str) -> tuple[str, str]:
    """(dtype, why): ``--dtype`` when given, else float16 for an fp16 run and bfloat16 for bf16 and fp32 runs."""
    if asked != "auto":
        return asked, "--dtype"
    params = (final.summary.get("config") or {}).get("training_params") or {}
    if params.get("fp16"):
        return "float16", "trained with fp16 (--dtype auto)"
    return "bfloat16", f"trained in {'bf16' if params.get('bf16') else 'fp32'} (--dtype auto)"


def _export(final: FinalDir, base, report: Path | None, out: Path, options: ExportOptions,
            llama_cpp: Path | None) -> ExportResult:
    dtype, why = export_dtype(final, options.dtype)
    model = load_merged(final, base) if base else load_model(str(final.path))
    if llama_cpp is not None:
        check_convertible(model.config, llama_cpp)
    model = model.to(DTYPES[dtype]).eval()
    base_id = options.base_model_id or hub_id_of(final.summary.get("model_path")) or hub_id_of(base)
    result = ExportResult(out, base, report, None, quantization(final) if base else None, dtype, why, base_id)
    with atomic_dir(out, kind="export") as tmp:
        result.template_written = _save_model(model, final, tmp)
        for extra in (final.path / SUMMARY, report):
            if extra and extra.is_file():
                shutil.copyfile(extra, tmp / (SUMMARY if extra.name == SUMMARY else EVAL_REPORT))
        result.max_logit_diff = verify_export(model, tmp, dtype)
        del model
        facts = CardFacts(out, final.path, final.summary, final.adapter_config, base, base_id, dtype,
                          options.license or "unknown", result.quantization,
                          _read_json(report) if report else None, data_sources(final.summary))
        if llama_cpp is not None:
            result.gguf, facts.gguf = export_gguf(tmp, out.name, options.gguf, final.summary, llama_cpp)
        (tmp / "README.md").write_text(model_card(facts), encoding="utf-8")
    return result


def _save_model(model, final: FinalDir, tmp: Path) -> bool:
    """Weights, tokenizer with the trained chat template, generation config; True when the template changed."""
    from transformers import GenerationConfig

    model.save_pretrained(str(tmp), safe_serialization=True)
    # final/'s generation config carries the template's stop ids; the base's would stop at eos only.
    if (final.path / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(str(final.path)).save_pretrained(str(tmp))
    template = final.summary.get("template") or {}
    if template.get("stop_token_ids"):
        generation = GenerationConfig.from_pretrained(str(tmp))
        generation.eos_token_id = list(template["stop_token_ids"])
        generation.save_pretrained(str(tmp))
    copy_tokenizer_files(final.path, tmp)
    return write_trained_template(tmp, template["name"]) if template.get("name") else False


@torch.no_grad()
def verify_export(model, export_dir: Path, dtype: str) -> float:
    """Reload the export with plain transformers; its logits must equal the in-memory model's within the
    tolerance of ``dtype`` (RELOAD_TOLERANCE, relative to the largest logit)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
    reloaded = AutoModelForCausalLM.from_pretrained(str(export_dir), dtype=model.dtype).eval()
    ids = tokenizer("Export check: the quick brown fox.", return_tensors="pt").input_ids
    device = next(model.parameters()).device
    logits = model(ids.to(device)).logits.float().cpu()
    diff = (logits - reloaded(ids).logits.float()).abs().max().item()
    if diff > RELOAD_TOLERANCE[dtype] * max(1.0, logits.abs().max().item()):
        raise UserError(f"{export_dir}: the saved model's logits differ from the merged model's by {diff:.2e}; "
                        "nothing was written (report this: the save lost weights)")
    return diff
