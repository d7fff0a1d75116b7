"""Data preparation throughput: scripts/02_prepare_sft_corpus.py against TRL's own dataset tokenization.

Both start from the same raw rows and end with tokenized examples and assistant-only loss masks,
with the same number of worker processes, timed inside their process (imports excluded):

* ours: read, clean, filter, deduplicate, tokenize with the chat template and loss mask, mix and
  write shards (the stage's own ``timings.total_s`` and ``cpu_s`` from ``training_state.json``);
* TRL: the same rows as ``messages`` (user = instruction + blank line + input, as ours builds them),
  ``datasets.Dataset.from_list``, then ``SFTTrainer`` preparation (chat template with generation
  markers, ``assistant_only_loss=True``, ``dataset_num_proc``), timed as the SFTTrainer construction
  minus the construction on a one-row dataset.

Both sides also record CPU seconds (user + system, of the process and its finished workers) over the
same span: on a machine other jobs share, wall-clock seconds follow the load and CPU seconds far less.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from utils.bench.metrics import peak_rss_mb
from utils.common.config import read_json
from utils.data.prepare import cpu_seconds
from utils.data.tokenizer import load_tokenizer


def raw_conversations(config_path: Path) -> list[dict]:
    """The rows of a bench dataset config as chat messages, built the way utils.data.conversations does."""
    config = read_json(config_path)
    rows = []
    for spec in config["datasets"]:
        fields = spec["text_fields"]
        for path in sorted(Path(spec["dataset_name"]).glob("*.json")) if Path(spec["dataset_name"]).is_dir() \
                else [Path(spec["dataset_name"])]:
            for row in json.loads(path.read_text(encoding="utf-8")):
                prompt, response = row.get(fields["prompt"]) or "", row.get(fields["response"]) or ""
                extra = row.get(fields.get("input", ""), "") or ""
                if not prompt.strip() or not response.strip():
                    continue
                user = "\n\n".join([prompt.strip()] + ([extra.strip()] if extra.strip() else []))
                rows.append({"messages": [{"role": "user", "content": user},
                                          {"role": "assistant", "content": response}]})
    return rows


def trl_prepare(config_path: Path, model_dir: str, tokenizer_dir: str, seq: int, num_proc: int,
                work_dir: Path) -> dict:
    """Time TRL's tokenization of the config's rows (run in a fresh process)."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM
    from trl import SFTConfig, SFTTrainer

    tokenizer = load_tokenizer(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    args = SFTConfig(output_dir=str(work_dir / "trl_prep"), max_length=seq, assistant_only_loss=True,
                     dataset_num_proc=num_proc if num_proc > 1 else None, report_to="none",
                     use_cpu=True, bf16=False)

    def build(dataset) -> tuple[float, float]:
        start, cpu = time.perf_counter(), cpu_seconds()
        SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
        return time.perf_counter() - start, cpu_seconds() - cpu

    overhead, overhead_cpu = build(Dataset.from_list([{"messages": [{"role": "user", "content": "Hi"},
                                                                    {"role": "assistant", "content": "Hello"}]}]))
    start, cpu = time.perf_counter(), cpu_seconds()
    rows = raw_conversations(config_path)
    dataset = Dataset.from_list(rows)
    load_s, load_cpu = time.perf_counter() - start, cpu_seconds() - cpu
    build_s, build_cpu = build(dataset)
    seconds, cpu_s = load_s + build_s - overhead, load_cpu + build_cpu - overhead_cpu
    return {"examples": len(rows), "seconds": seconds, "examples_per_s": len(rows) / seconds,
            "cpu_s": cpu_s, "examples_per_cpu_s": len(rows) / cpu_s, "peak_rss_mb": peak_rss_mb(),
            "num_proc": num_proc}


def ours_prepare_result(data_dir: Path, num_proc: int) -> dict:
    """What the prepare stage recorded about its own run (rows read, in-process seconds)."""
    state = json.loads((data_dir / "training_state.json").read_text())
    rows = sum(source["read"] for source in state["sources"].values())
    seconds, cpu_s = state["timings"]["total_s"], state["timings"]["cpu_s"]
    return {"examples": rows, "seconds": seconds, "examples_per_s": rows / seconds, "cpu_s": cpu_s,
            "examples_per_cpu_s": rows / cpu_s, "num_proc": num_proc}
