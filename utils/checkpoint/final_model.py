"""The ``final/`` directory a training stage leaves: HF format that plain transformers/peft load."""
from __future__ import annotations

import json
from pathlib import Path

from utils.common.atomic import atomic_dir
from utils.data.tokenizer import copy_tokenizer_files
from utils.parallel.state_dict import lm_state_dict, unwrap_lm


def save_final(accelerator, loss_module, final_dir: Path, tokenizer_path: str, extra: dict,
               merge_adapter: bool, stop_token_ids: list[int] | None = None) -> Path | None:
    """Write final/ atomically: weights (adapter, or merged/full model), tokenizer, run summary."""
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
        (tmp / "training_summary.json").write_text(json.dumps(extra, indent=2, sort_keys=True) + "\n")
    return final_dir
