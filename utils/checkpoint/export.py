"""Export: a training stage's final/ (LoRA adapter or full model) -> one standalone HF model directory.

The export holds merged safetensors weights, the tokenizer files copied byte for byte (chat template
included, so the fingerprint is unchanged), the generation config with the template's stop ids, a
model card (README.md) and, for provenance, training_summary.json and eval_report.json. It loads with
plain ``AutoModelForCausalLM`` / ``AutoTokenizer``: no peft, no code from this repository.
"""
from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

from utils.common.atomic import atomic_dir, check_owner, exclusive, recover_published, refuse_inside
from utils.common.errors import UserError
from utils.data.tokenizer import copy_tokenizer_files
from utils.model.modeling import load_model
from utils.parallel.quantization import load_base

ADAPTER_CONFIG = "adapter_config.json"
SUMMARY = "training_summary.json"
EVAL_REPORT = "eval_report.json"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
OWN_TEMPLATES = ("instruct", "chat", "alpaca")
"""Prompt formats of utils/data/templates.py that the tokenizer's chat_template does not reproduce."""


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
    # peft costs seconds to import; deferred so callers that skip this stay fast
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


def export_model(model_path: str | Path, output_dir: str | Path, eval_report: str | None = None,
                 base_model_path: str | None = None, dtype: str = "float32") -> ExportResult:
    """Merge (or re-save) ``model_path`` into a standalone HF directory at ``output_dir``, atomically."""
    final = read_final(model_path)
    out = Path(output_dir)
    report = find_eval_report(final.path, eval_report)
    base = resolve_base(final, base_model_path) if final.adapter_config else None
    refuse_inside(out, {"--model_path": final.path, "the base model": base})
    with exclusive(out):
        check_owner(out, "export")  # before the merge, not after
        return _export(final, base, report, out, dtype)


def _export(final: FinalDir, base, report: Path | None, out: Path, dtype: str) -> ExportResult:
    model = load_merged(final, base) if base else load_model(str(final.path))
    model = model.to(DTYPES[dtype]).eval()
    with atomic_dir(out, kind="export") as tmp:
        _save_model(model, final.path, tmp)
        for extra in (final.path / SUMMARY, report):
            if extra and extra.is_file():
                shutil.copyfile(extra, tmp / (SUMMARY if extra.name == SUMMARY else EVAL_REPORT))
        card = model_card(final, base, _data_sources(final.summary), _read_json(report) if report else None, out)
        (tmp / "README.md").write_text(card, encoding="utf-8")
        diff = verify_export(model, tmp)
    return ExportResult(out, base, report, diff, quantization(final) if base else None)


def _save_model(model, final_path: Path, tmp: Path) -> None:
    # transformers costs seconds to import; deferred so callers that skip this stay fast
    from transformers import GenerationConfig

    model.save_pretrained(str(tmp), safe_serialization=True)
    # final/'s generation config carries the template's stop ids; the base's would stop at eos only.
    if (final_path / "generation_config.json").is_file():
        GenerationConfig.from_pretrained(str(final_path)).save_pretrained(str(tmp))
    copy_tokenizer_files(final_path, tmp)


@torch.no_grad()
def verify_export(model, export_dir: Path) -> float:
    """Reload the export with plain transformers; its logits must equal the in-memory model's."""
    # transformers costs seconds to import; deferred so callers that skip this stay fast
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(export_dir))
    reloaded = AutoModelForCausalLM.from_pretrained(str(export_dir), dtype=model.dtype).eval()
    ids = tokenizer("Export check: the quick brown fox.", return_tensors="pt").input_ids
    device = next(model.parameters()).device
    diff = (model(ids.to(device)).logits.float().cpu() - reloaded(ids).logits.float()).abs().max().item()
    if diff > 1e-4 * (1 if model.dtype == torch.float32 else 100):
        raise UserError(f"{export_dir}: the saved model's logits differ from the merged model's by {diff:.2e}; "
                        "nothing was written (report this: the save lost weights)")
    return diff


# ---------------------------------------------------------------------- model card
def _data_sources(summary: dict) -> list[dict]:
    """Per data dir: its weight and, from its manifest when still present, the sources inside it."""
    dirs, weights = summary.get("data_dirs") or [], summary.get("data_weights") or []
    total = sum(weights) or 1.0
    rows = []
    for i, raw in enumerate(dirs):
        manifest = _optional_json(Path(raw) / "manifest.json")
        entries = {d.get("name"): d for d in manifest.get("config", {}).get("datasets", [])}
        sources = [{"name": name, "dataset": entries.get(name, {}).get("dataset_name", ""),
                    "license": info.get("license") or "", "train": info.get("written_train", info.get("kept_train"))}
                   for name, info in manifest.get("sources", {}).items()]
        share = weights[i] / total if i < len(weights) else None
        rows.append({"dir": raw, "share": share, "sources": sources})
    return rows


def _optional_json(path: Path) -> dict:
    """A data dir's manifest may be gone or moved since training: the card then says so."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def model_card(final: FinalDir, base: str | None, data: list[dict], report: dict | None, out: Path) -> str:
    """README.md: what the model is, how to use it, what it was trained on and how it scored."""
    summary = final.summary
    lines = [f"# {out.name}", "", _origin(final, base), "", *_usage(summary, out), *_data_section(summary, data),
             *_training_section(final), *_eval_section(report)]
    return "\n".join(lines).rstrip() + "\n"


def _origin(final: FinalDir, base: str | None) -> str:
    trained_on = final.summary.get("model_path")
    base_name = f"`{trained_on or base or '(unknown)'}`"
    if base and trained_on and Path(base).resolve() != Path(trained_on).resolve():
        base_name += f" (merged into the copy at `{base}`)"
    if final.adapter_config:
        lora = final.adapter_config
        how = (f"a LoRA adapter (r={lora.get('r')}, alpha={lora.get('lora_alpha')}, "
               f"targets {', '.join(sorted(lora.get('target_modules') or []))}) merged into the weights")
        quant = quantization(final)
        if quant:
            how += (f"; trained on the base held in 4 bits ({quant.get('bnb_4bit_quant_type')}, QLoRA), so merged "
                    "into that base dequantized: the weights the adapter was trained against")
    else:
        how = "full fine-tuning"
    return (f"Supervised fine-tune of base model {base_name} ({how}), exported from `{final.path}` "
            "as a standalone transformers model.")


def _usage(summary: dict, out: Path) -> list[str]:
    template = summary.get("template") or {}
    lines = ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'tokenizer = AutoTokenizer.from_pretrained("{out}")',
             f'model = AutoModelForCausalLM.from_pretrained("{out}")',
             'ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}],',
             '                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)',
             "out = model.generate(**ids, max_new_tokens=64)  # stops at the template's end-of-turn token",
             'print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))', "```", ""]
    if template.get("name") in OWN_TEMPLATES:
        lines += [f"**Prompt format:** trained with the pipeline's `{template['name']}` template, which the "
                  "tokenizer's `chat_template` does not reproduce: render prompts with "
                  f"`utils.data.templates.get_template('{template['name']}', tokenizer)` instead.", ""]
    elif template:
        lines += [f"Prompt format: template `{template.get('name')}` (family {template.get('family', '?')}), "
                  f"the tokenizer's `chat_template`; stop token ids {template.get('stop_token_ids')}.", ""]
    return lines


def _data_section(summary: dict, data: list[dict]) -> list[str]:
    lines = ["## Training data", ""]
    if not data:
        return lines + ["(not recorded: final/ has no training_summary.json)", ""]
    lines += ["| data dir | sampling share | sources (train examples, license) |", "|---|---|---|"]
    for row in data:
        share = f"{row['share']:.2f}" if row["share"] is not None else "?"
        sources = "; ".join(f"{s['name']} `{s['dataset']}` ({s['train']}, {s['license'] or 'license not given'})"
                            for s in row["sources"]) or "(manifest not found)"
        lines.append(f"| `{row['dir']}` | {share} | {sources} |")
    return lines + [""]


def _training_section(final: FinalDir) -> list[str]:
    summary = final.summary
    lines = ["## Training", ""]
    if summary:
        lines.append(f"{summary.get('steps', '?')} optimizer steps, {summary.get('tokens_seen', 0):,} tokens; "
                     f"tokenizer sha256 `{summary.get('tokenizer_sha256', '?')}`.")
        before = (summary.get("initial_eval") or {}).get("eval/loss")
        after = (summary.get("last_eval") or {}).get("eval/loss")
        if before is not None and after is not None:
            lines.append(f"Validation loss {before:.4f} -> {after:.4f}.")
    if summary.get("config"):
        lines += ["", "Training config:", "", "```json", json.dumps(summary["config"], indent=2, sort_keys=True), "```"]
    return lines + [""]


def _eval_section(report: dict | None, limit: int = 40) -> list[str]:
    if report is None:
        return ["## Evaluation", "", "No evaluation report was given (run the evaluation stage, then export "
                "with --eval_report).", ""]
    rows = [(k, v) for k, v in _flatten(report) if isinstance(v, (int, float, str, bool))][:limit]
    lines = ["## Evaluation", "", "From eval_report.json (copied beside this card):", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {_cell(v)} |" for k, v in rows]
    return lines + [""]


def _cell(value) -> str:
    text = f"{value:.4g}" if isinstance(value, float) else str(value)
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= 80 else text[:77] + "..."


def _flatten(data, prefix: str = ""):
    """Dotted keys of the scalars of a nested report; lists are skipped (per-example rows)."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from _flatten(value, f"{prefix}{key}.")
    elif not isinstance(data, list):
        yield prefix.rstrip("."), data
