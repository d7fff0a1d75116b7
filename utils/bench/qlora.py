"""QLoRA against LoRA (``scripts/benchmark_throughput.py --qlora``): this trainer, same model, data, steps.

Each pair trains one base with the same LoRA adapter on the same examples in the same steps, once with the
base in full precision and once held in 4 bits (the ``quantization`` block below), each in a fresh process.
It reports peak resident memory, supervised tokens/s and the mean loss over the same steps (so at equal
tokens). Cases: SmolLM2-135M-Instruct (its GGUF is Q4_1, so ``requantize_gguf`` is on and both runs start
from the same dequantized weights) and the small preset (random weights, demo tokenizer), both with SmolLM2's
adapter (r 16 on every projection).
"""
from __future__ import annotations

import dataclasses

from utils.bench.benchmark import SMOLLM2, SMOLLM2_LORA, BenchSettings, Case, build_cases, run_one

QLORA = {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4", "bnb_4bit_use_double_quant": True,
         "bnb_4bit_compute_dtype": "float32", "requantize_gguf": True}
QLORA_SIZES = ("small", SMOLLM2)


def qlora_pairs(settings: BenchSettings, checkpointing: bool = False) -> tuple[list[tuple[Case, Case]], list[str]]:
    """(LoRA case, QLoRA case) per size asked for; presets run at the first --seq."""
    sizes = [s for s in settings.sizes if s in QLORA_SIZES] or list(QLORA_SIZES)
    cases, notes = build_cases(dataclasses.replace(settings, sizes=sizes, seqs=settings.seqs[:1]))
    pairs = []
    for case in cases:
        tag = "-gc" if checkpointing else ""
        lora = dataclasses.replace(case, name=f"{case.size}-lora{tag}@{case.seq}", lora=SMOLLM2_LORA,
                                   gradient_checkpointing=checkpointing)
        pairs.append((lora, dataclasses.replace(lora, name=f"{case.size}-qlora{tag}@{case.seq}", quantization=QLORA)))
    return pairs, notes


def run_qlora_comparison(settings: BenchSettings, checkpointing: bool = False) -> dict:
    """Every pair, LoRA then QLoRA, ``settings.repeats`` times; the ratios QLoRA / LoRA per pair.

    ``checkpointing``: both runs recompute activations in backward (gradient_checkpointing), so the base
    weights, not the activations, dominate the peak: the setting QLoRA is usually run with.
    """
    pairs, notes = qlora_pairs(settings, checkpointing)
    rows = []
    for lora, qlora in pairs:
        runs = {}
        for repeat in range(settings.repeats):
            for case in (lora, qlora):
                print(f"[bench] {case.name} (repeat {repeat + 1}/{settings.repeats})", flush=True)
                result = run_one(case, "ours", repeat, settings)
                runs.setdefault(case.name, []).append(result)
                window = result["window"]
                print(f"[bench]   {window['supervised_per_s']:,.1f} supervised tok/s, mean loss "
                      f"{window['mean_loss']:.4f}, peak RSS {result['peak_rss_mb']:,.0f} MiB", flush=True)
        rows.append(_row(lora, runs[lora.name], runs[qlora.name]))
    return {"rows": rows, "notes": notes, "settings": {"steps": settings.steps, "warmup": settings.warmup,
                                                        "repeats": settings.repeats, "threads": settings.threads,
                                                        "gradient_checkpointing": checkpointing}}


def _best(runs: list[dict]) -> dict:
    """Per metric over the repeats: the fastest window, the lowest peak, the loss (identical across repeats)."""
    return {"supervised_per_s": max(r["window"]["supervised_per_s"] for r in runs),
            "mean_loss": runs[0]["window"]["mean_loss"],
            "peak_rss_mb": min(r["peak_rss_mb"] for r in runs)}


def _row(lora: Case, lora_runs: list[dict], qlora_runs: list[dict]) -> dict:
    a, b = _best(lora_runs), _best(qlora_runs)
    return {"case": lora.name.replace("-lora", "").replace("-gc", " (gradient checkpointing)"), "lora": a, "qlora": b,
            "memory_ratio": b["peak_rss_mb"] / a["peak_rss_mb"],
            "speed_ratio": b["supervised_per_s"] / a["supervised_per_s"],
            "loss_change": b["mean_loss"] / a["mean_loss"] - 1}


def qlora_table(result: dict) -> str:
    """The comparison as a Markdown table."""
    lines = ["| case | peak RSS LoRA / QLoRA (MiB) | ratio | supervised tok/s LoRA / QLoRA | ratio | "
             "mean loss LoRA / QLoRA | loss change |", "|---|---|---|---|---|---|---|"]
    for row in result["rows"]:
        a, b = row["lora"], row["qlora"]
        lines.append(f"| {row['case']} | {a['peak_rss_mb']:,.0f} / {b['peak_rss_mb']:,.0f} | "
                     f"{row['memory_ratio']:.2f}x | {a['supervised_per_s']:,.1f} / {b['supervised_per_s']:,.1f} | "
                     f"{row['speed_ratio']:.2f}x | {a['mean_loss']:.4f} / {b['mean_loss']:.4f} | "
                     f"{row['loss_change']:+.2%} |")
    return "\n".join(lines + [f"note: {n}" for n in result["notes"]])
