"""Full-state checkpoints: weights, optimizer, scheduler, every rank's RNG, sampler position.

Layout of ``<output_dir>/checkpoint-<step>/``::

    adapter_model.safetensors + adapter_config.json   (LoRA)  or  model.safetensors + config.json
    optimizer.pt, scheduler.pt                         (torch.save of state dicts; loaded weights_only)
    rng_state_<rank>.pt                                (python, numpy, torch, cuda RNG of each rank)
    training_state.json                                (step, tokens, loss history, sampler, config, hashes)
    COMPLETE                                           (written last: only complete checkpoints resume)

It is written in ``.checkpoint-<step>.tmp-*`` beside the final name, synced, then renamed.
"""
from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from utils.atomic import fsync_tree, publish_dir
from utils.errors import UserError

COMPLETE = "COMPLETE"
_NAME = re.compile(r"^checkpoint-(\d+)$")


def rng_state() -> dict:
    """This process's RNG states in types that ``torch.load(weights_only=True)`` accepts."""
    version, keys, gauss = random.getstate()
    np_state = np.random.get_state()
    state = {
        "python": [version, list(keys), gauss],
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, keys, gauss = state["python"]
    random.setstate((version, tuple(keys), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(output_dir: Path) -> list[Path]:
    """Complete checkpoints, oldest first; temp dirs and ones without COMPLETE are ignored."""
    found = []
    for path in Path(output_dir).glob("checkpoint-*"):
        match = _NAME.match(path.name)
        if match and (path / COMPLETE).is_file() and (path / "training_state.json").is_file():
            found.append((int(match.group(1)), path))
    return [p for _, p in sorted(found)]


def resolve_resume(spec: str | None, output_dir: Path) -> Path | None:
    """``auto`` → newest complete checkpoint (or None); a path must be a complete checkpoint."""
    if not spec:
        return None
    if spec == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(spec)
    if not (path / COMPLETE).is_file():
        raise UserError(f"{path}: not a complete checkpoint (missing {COMPLETE}); "
                        "use --resume_from_checkpoint auto to take the newest complete one")
    return path


def save_checkpoint(accelerator, output_dir: Path, step: int, model, optimizer, scheduler,
                    state: dict, save_total_limit: int | None) -> Path:
    """Write checkpoint-<step> atomically on the main process (RNG from every rank)."""
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = Path(output_dir) / f".checkpoint-{step}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        torch.save(rng_state(), tmp / f"rng_state_{accelerator.process_index}.pt")
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            _write_main_files(accelerator, tmp, model, optimizer, scheduler, state)
            fsync_tree(tmp)
            publish_dir(tmp, final)
            _rotate(Path(output_dir), save_total_limit)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise UserError(f"{final}: checkpoint write failed ({err.strerror}); the previous "
                        "checkpoint is intact — free disk space or fix permissions and resume") from None
    accelerator.wait_for_everyone()
    return final


def _write_main_files(accelerator, tmp: Path, model, optimizer, scheduler, state: dict) -> None:
    from utils.modeling import lm_state_dict, unwrap_lm

    unwrap_lm(accelerator, model).save_pretrained(str(tmp), safe_serialization=True,
                                                  state_dict=lm_state_dict(accelerator, model))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "training_state.json").write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
    (tmp / COMPLETE).write_text("ok\n")


def _rotate(output_dir: Path, limit: int | None) -> None:
    if limit is None:
        return
    for old in list_checkpoints(output_dir)[:-limit]:
        shutil.rmtree(old, ignore_errors=True)


def load_training_state(path: Path) -> dict:
    try:
        return json.loads((path / "training_state.json").read_text())
    except (OSError, ValueError) as err:
        raise UserError(f"{path}/training_state.json: unreadable ({err}); pick another checkpoint") from None


def load_checkpoint(accelerator, path: Path, model, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and this rank's RNG; return training_state."""
    from utils.modeling import load_weights_into, unwrap_lm

    state = load_training_state(path)
    load_weights_into(unwrap_lm(accelerator, model), path)
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True, map_location="cpu"))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng_state_{accelerator.process_index}.pt"
    if not rng_file.is_file():  # resumed on more ranks than saved: derive from rank 0's
        rng_file = path / "rng_state_0.pt"
    set_rng_state(torch.load(rng_file, weights_only=True))
    return state
