"""The ``final/`` directory a training stage leaves: HF format that plain transformers/peft load."""
from __future__ import annotations

import json
from pathlib import Path

from utils.checkpoint.hub import hub_id_of
from utils.common.publish import atomic_dir
from utils.data.chat_jinja import write_trained_template
from utils.data.tokenizer import copy_tokenizer_files
from utils.parallel.state_dict import lm_state_dict, unwrap_lm


def save_final(accelerator, loss_module, final_dir: Path, tokenizer_path: str, extra: dict,
               merge_adapter: bool, stop_token_ids: list[int] | None = None) -> Path | None:
    """Write final/ atomically: weights (adapter, or merged/full model), tokenizer with the chat template training
    rendered (``extra["template"]``, an SFT run's), run summary."""
    state = lm_state_dict(accelerator, loss_module)
    if not accelerator.is_main_process:
        return None
    model = unwrap_lm(accelerator, loss_module)
    with atomic_dir(final_dir, kind="final") as tmp:
        if merge_adapter and hasattr(model, "peft_config"):
            model.load_state_dict(state)
            merged = model.merge_and_unload()  # the base weights change in place: this ends the run
            merged.save_pretrained(str(tmp), safe_serialization=True)
        else:
            model.save_pretrained(str(tmp), safe_serialization=True, state_dict=state)
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        generation = base.generation_config
        if stop_token_ids:
            generation.eos_token_id = list(stop_token_ids)
        generation.save_pretrained(str(tmp))
        copy_tokenizer_files(tokenizer_path, tmp)
        if (extra.get("template") or {}).get("name"):
            write_trained_template(tmp, extra["template"]["name"])
        if (tmp / "adapter_config.json").is_file():
            name_base(tmp / "adapter_config.json", extra.get("model_path"))
        (tmp / "training_summary.json").write_text(json.dumps(extra, indent=2, sort_keys=True) + "\n")
    return final_dir


def name_base(adapter_config: Path, model_path: str | None) -> None:
    """The adapter names its base by the Hub id when one is known (the base's own, or its recorded
    ``_name_or_path``); a path on this disk stays, said in one line (training_summary.json keeps the path)."""
    config = json.loads(adapter_config.read_text(encoding="utf-8"))
    hub = hub_id_of(model_path) or hub_id_of(config.get("base_model_name_or_path"))
    if hub:
        if config.get("base_model_name_or_path") != hub:
            config["base_model_name_or_path"] = hub
            adapter_config.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
        return
    print(f"note: final/{adapter_config.name} names its base by the path {config.get('base_model_name_or_path')} "
          "on this disk (no Hub id known); elsewhere, set base_model_name_or_path to where the base is", flush=True)
