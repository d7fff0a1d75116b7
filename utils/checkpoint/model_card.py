"""The export's model card (README.md): Hub metadata, what the model is, how to use it, data, training, scores."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from utils.checkpoint.hub import front_matter
from utils.common.config import read_json_dict


@dataclass
class CardFacts:
    """What the card says, gathered by the export."""

    out: Path
    final_path: Path
    summary: dict
    adapter_config: dict | None
    base: str | None
    """The base the adapter was merged into (None: final/ was a full model)."""
    base_id: str | None
    """The base's Hub id when known (--base_model_id, or the base's recorded ``_name_or_path``)."""
    dtype: str
    license: str
    quantization: dict | None = None
    report: dict | None = None
    data: list[dict] = field(default_factory=list)
    gguf: list[str] = field(default_factory=list)
    """The card's GGUF section (utils/checkpoint/gguf_export.py writes it), empty without --gguf."""


def data_sources(summary: dict) -> list[dict]:
    """Per data dir: its weight and, from its manifest when still present, the sources inside it."""
    dirs, weights = summary.get("data_dirs") or [], summary.get("data_weights") or []
    total = sum(weights) or 1.0
    rows = []
    for i, raw in enumerate(dirs):
        manifest = read_json_dict(Path(raw) / "manifest.json")
        entries = {d.get("name"): d for d in manifest.get("config", {}).get("datasets", [])}
        sources = [{"name": name, "dataset": entries.get(name, {}).get("dataset_name", ""),
                    "hub": entries.get(name, {}).get("type") == "huggingface",
                    "license": info.get("license") or "", "train": info.get("written_train", info.get("kept_train"))}
                   for name, info in manifest.get("sources", {}).items()]
        share = weights[i] / total if i < len(weights) else None
        rows.append({"dir": raw, "share": share, "sources": sources})
    return rows


def model_card(facts: CardFacts) -> str:
    """README.md: Hub front matter, then what the model is, how to use it, what it was trained on and how it scored."""
    lines = [*front_matter(_hub_fields(facts)), f"# {facts.out.name}", "", _origin(facts), "",
             *_usage(facts), *facts.gguf, *_data_section(facts), *_training_section(facts.summary),
             *_eval_section(facts.report)]
    return "\n".join(lines).rstrip() + "\n"


def _hub_fields(facts: CardFacts) -> dict:
    datasets = sorted({s["dataset"] for row in facts.data for s in row["sources"] if s["hub"] and s["dataset"]})
    tags = ["sft-pipeline", "lora" if facts.adapter_config else "full-fine-tuning", "sft"]
    if facts.quantization:
        tags.append("qlora")
    if facts.gguf:
        tags.append("gguf")
    return {"base_model": facts.base_id, "datasets": datasets, "license": facts.license,
            "library_name": "transformers", "tags": tags, "pipeline_tag": "text-generation"}


def _origin(facts: CardFacts) -> str:
    trained_on, base = facts.summary.get("model_path"), facts.base
    base_name = f"`{facts.base_id or trained_on or base or '(unknown)'}`"
    if facts.base_id and trained_on and trained_on != facts.base_id:
        base_name += f" (trained from the copy at `{trained_on}`)"
    if base and trained_on and Path(base).resolve() != Path(trained_on).resolve():
        base_name += f" (merged into the copy at `{base}`)"
    if facts.adapter_config:
        lora = facts.adapter_config
        how = (f"a LoRA adapter (r={lora.get('r')}, alpha={lora.get('lora_alpha')}, "
               f"targets {', '.join(sorted(lora.get('target_modules') or []))}) merged into the weights")
        if facts.quantization:
            how += (f"; trained on the base held in 4 bits ({facts.quantization.get('bnb_4bit_quant_type')}, "
                    "QLoRA), so merged into that base dequantized: the weights the adapter was trained against")
    else:
        how = "full fine-tuning"
    return (f"Supervised fine-tune of base model {base_name} ({how}), exported from `{facts.final_path}` "
            f"as a standalone transformers model; weights saved in {facts.dtype}.")


def _usage(facts: CardFacts) -> list[str]:
    template, out = facts.summary.get("template") or {}, facts.out
    lines = ["## Use", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
             f'tokenizer = AutoTokenizer.from_pretrained("{out}")',
             f'model = AutoModelForCausalLM.from_pretrained("{out}")',
             'ids = tokenizer.apply_chat_template([{"role": "user", "content": "Hello"}],',
             '                                    add_generation_prompt=True, return_tensors="pt", return_dict=True)',
             "out = model.generate(**ids, max_new_tokens=64)  # stops at the template's end-of-turn token",
             'print(tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))', "```", ""]
    if template:
        lines += [f"Prompt format: trained with template `{template.get('name')}` (family "
                  f"{template.get('family', '?')}); the tokenizer's `chat_template` renders exactly what training "
                  "rendered, so any chat endpoint builds the prompts the model saw. Generation stops at token ids "
                  f"{template.get('stop_token_ids')} (`generation_config.json`).", ""]
    return lines


def _data_section(facts: CardFacts) -> list[str]:
    lines = ["## Training data", ""]
    if not facts.data:
        return lines + ["(not recorded: final/ has no training_summary.json)", ""]
    lines += ["| data dir | sampling share | sources (train examples, license) |", "|---|---|---|"]
    for row in facts.data:
        share = f"{row['share']:.2f}" if row["share"] is not None else "?"
        sources = "; ".join(f"{s['name']} `{s['dataset']}` ({s['train']}, {s['license'] or 'license not given'})"
                            for s in row["sources"]) or "(manifest not found)"
        lines.append(f"| `{row['dir']}` | {share} | {sources} |")
    return lines + [""]


def _training_section(summary: dict) -> list[str]:
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
