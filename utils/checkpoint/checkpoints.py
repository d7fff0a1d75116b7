"""Full-state checkpoints: weights, optimizer, scheduler, every rank's RNG, sampler position.

Layout of ``<output_dir>/checkpoint-<step>/``::

    adapter_model.safetensors + adapter_config.json   (LoRA)  or  model.safetensors + config.json
    optimizer.pt                                       (the full optimizer state, keyed by parameter name)
    sharded/                                           (sharded runs, instead of the two above: DCP shards)
    scheduler.pt                                       (torch.save of state dicts; loaded weights_only)
    rng_state_<rank>.pt                                (python, numpy, torch, cuda RNG of each rank)
    training_state.json                                (step, tokens, loss history, sampler, config, hashes)
    checksums.json                                     (sha256 of every file above, verified on resume)
    COMPLETE                                           (written last: only complete checkpoints resume)

It is written in ``.checkpoint-<step>.tmp`` beside the final name, synced, then renamed; rotation renames
an old checkpoint to ``.checkpoint-<step>.deleting`` before deleting it. So ``checkpoint-<step>`` is always
whole: a crash (SIGKILL, power loss) at any moment leaves the newest complete one for ``auto`` to find.
A sharded run (FSDP2) writes no ``model.safetensors`` and no ``optimizer.pt``: instead ``sharded/`` is a
torch.distributed.checkpoint (DCP) directory in which every rank writes its own shard of the trainable weights and
of the optimizer state (``__<rank>_0.distcp``, and DCP's ``.metadata``), so no rank gathers the run into its
memory; loading reshards, so such a checkpoint resumes on any number of ranks, sharded or not. An unsharded run
(one process, DDP) saves the whole weights and optimizer state as above, keyed by parameter name, and resumes on
any number of ranks too.
A file whose bytes changed after the write (bit rot, an edit) no longer matches checksums.json: resuming from
that checkpoint is refused naming the file, and ``auto`` takes the newest intact one. Checkpoints written
before checksums.json existed resume unverified.
"""
from __future__ import annotations

import json
import os
import sys
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch

from utils.checkpoint.record import TrainingState
from utils.common.errors import UserError, one_line
from utils.common.hashing import sha256_file
from utils.common.publish import fsync_tree, publish_dir, write_failure
from utils.model.modeling import load_weights_into
from utils.parallel.fsdp import is_sharded, load_sharded, save_sharded
from utils.parallel.state_dict import lm_state_dict, load_optimizer, optimizer_state, unwrap_lm

COMPLETE = "COMPLETE"
CHECKSUMS = "checksums.json"
SHARDED = "sharded"
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


def resolve_resume(spec: str | None, output_dir: Path, announce: bool = True) -> Path | None:
    """``auto`` → newest complete and intact checkpoint (or None); a path must be a complete, intact checkpoint.

    A checkpoint whose files no longer match their recorded sha256 is refused naming the file; ``auto`` skips
    it for the next older one and says so in one line (when ``announce``: the main process).
    """
    if not spec:
        return None
    if spec == "auto":
        found = list_checkpoints(output_dir)
        skipped = []
        for path in reversed(found):
            problem = verify_checkpoint(path)
            if problem is None:
                if skipped and announce:
                    print(f"skipped damaged {'; '.join(skipped)} — resuming from {path.name}, the newest intact "
                          "checkpoint", file=sys.stderr, flush=True)
                return path
            skipped.append(f"{path.name} ({problem})")
        if skipped:
            raise UserError(f"{output_dir}: no intact checkpoint to resume: {'; '.join(skipped)} — start over with "
                            "--overwrite_output_dir or choose another --output_dir")
        return None
    path = Path(spec)
    if not (path / COMPLETE).is_file():
        raise UserError(f"{path}: not a complete checkpoint (missing {COMPLETE}); "
                        "use --resume_from_checkpoint auto to take the newest complete one")
    problem = verify_checkpoint(path)
    if problem is not None:
        raise UserError(f"{path}: {problem} — resume from an earlier checkpoint-N, or use "
                        "--resume_from_checkpoint auto to take the newest intact one")
    return path


def _record_checksums(ckpt: Path) -> None:
    """sha256 of every file of the checkpoint (written before COMPLETE)."""
    files = sorted(p for p in ckpt.rglob("*") if p.is_file() and p.name not in (CHECKSUMS, COMPLETE))
    sums = {p.relative_to(ckpt).as_posix(): sha256_file(p) for p in files}
    (ckpt / CHECKSUMS).write_text(json.dumps({"sha256": sums}, indent=1, sort_keys=True) + "\n")


def verify_checkpoint(ckpt: Path) -> str | None:
    """What is wrong with ``ckpt``'s files against checksums.json (naming the file), or None when intact.

    A checkpoint without checksums.json (written before it existed) is taken as intact.
    """
    record = ckpt / CHECKSUMS
    if not record.exists():
        return None
    try:
        sums = json.loads(record.read_text(encoding="utf-8"))["sha256"]
        items = sorted(sums.items())
        if not all(isinstance(k, str) and isinstance(v, str) for k, v in items):
            raise ValueError("not a map of names to hashes")
    except (OSError, ValueError, KeyError, TypeError, AttributeError, RecursionError) as err:
        return f"{CHECKSUMS} is unreadable ({one_line(err)[:120]})"
    for name, expected in items:
        path = ckpt / name
        if ".." in Path(name).parts or Path(name).is_absolute():
            return f"{CHECKSUMS} names a file outside the checkpoint ({name})"
        try:
            actual = sha256_file(path)
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as err:
            return f"{name} is unreadable ({err.strerror})"
        if actual != expected:
            return f"{name} does not match the sha256 recorded when it was written (the file changed on disk)"
    return None


def save_checkpoint(accelerator, output_dir: Path, step: int, model, optimizer, scheduler,
                    state: TrainingState, save_total_limit: int | None, keep: int | None = None) -> Path:
    """Write checkpoint-<step> atomically on the main process (RNG from every rank). Every rank must call it: the
    weights and optimizer state are gathered first.

    A failed write (disk full, read-only target) removes the temp dir on every rank and raises the same
    UserError everywhere, so no rank waits forever for the others; the previous checkpoint is untouched.
    """
    final = Path(output_dir) / f"checkpoint-{step}"
    tmp = Path(output_dir) / f".checkpoint-{step}.tmp"
    main, sharded = accelerator.is_main_process, is_sharded(model)
    weights, optim = ({}, {}) if sharded else (lm_state_dict(accelerator, model), optimizer_state(model, optimizer))
    failure = _attempt(lambda: _fresh_dir(tmp)) if main else None
    failure = _agree(accelerator, failure)
    if failure is None:
        failure = _agree(accelerator, _attempt(
            lambda: torch.save(rng_state(), tmp / f"rng_state_{accelerator.process_index}.pt")))
    if failure is None and sharded:
        failure = _agree(accelerator, _attempt(lambda: _save_shards(model, optimizer, tmp / SHARDED)))
    if failure is None and main:
        def write_and_publish() -> None:
            _write_main_files(unwrap_lm(accelerator, model), tmp, weights, optim, scheduler, state)
            fsync_tree(tmp)
            publish_dir(tmp, final)

        failure = _attempt(write_and_publish)
    failure = _agree(accelerator, failure)
    if failure is not None:
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        newest = list_checkpoints(Path(output_dir))
        kept = f"the previous checkpoint {newest[-1]} is intact" if newest else "no earlier checkpoint exists"
        raise UserError(f"{final}: checkpoint write failed ({failure}); {kept} — free disk space or fix "
                        "permissions, then resume with --resume_from_checkpoint auto") from None
    if main:
        _rotate(Path(output_dir), save_total_limit, keep)
    accelerator.wait_for_everyone()
    return final


def _save_shards(model, optimizer, path: Path) -> None:
    """DCP's write of every rank's shards; a failed write on any rank fails on all of them (DCP gathers the
    errors), reported as the first rank's reason."""
    from torch.distributed.checkpoint.api import CheckpointException

    try:
        save_sharded(model, optimizer, path)
    except CheckpointException as err:
        reasons = [write_failure(e) for e in (getattr(err, "failures", None) or {}).values()
                   if isinstance(e, BaseException)]
        reason = next((r for r in reasons if r), None)
        if reason is None:
            raise
        raise OSError(reason) from None


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)


def _attempt(write) -> str | None:
    """Run ``write``; the reason when it failed writing (other exceptions propagate)."""
    try:
        write()
    except Exception as err:  # noqa: BLE001 - only write failures are kept, the rest is re-raised
        reason = write_failure(err)
        if reason is None:
            raise
        return reason
    return None


def _agree(accelerator, failure: str | None) -> str | None:
    """Every rank learns whether any rank failed (one tiny all-reduce; nothing when single-process)."""
    if accelerator.num_processes == 1:
        return failure
    flag = torch.tensor([0.0 if failure is None else 1.0], device=accelerator.device)
    if accelerator.reduce(flag, "sum").item() and failure is None:
        return "failed on another process; see its message"
    return failure


def _write_main_files(lm, tmp: Path, weights: dict, optim: dict, scheduler, state: TrainingState) -> None:
    if not (tmp / SHARDED).is_dir():
        lm.save_pretrained(str(tmp), safe_serialization=True, state_dict=weights)
        torch.save(optim, tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    (tmp / "training_state.json").write_text(json.dumps(state.to_json(), indent=2, sort_keys=True) + "\n")
    _record_checksums(tmp)
    (tmp / COMPLETE).write_text("ok\n")


def _rotate(output_dir: Path, limit: int | None, keep: int | None = None) -> None:
    """Delete all but the newest ``limit`` checkpoints (and checkpoint-``keep``, the best one), each first
    renamed out of the listing.

    A crash during the delete then leaves a hidden ``.checkpoint-N.deleting`` (swept at the next save),
    never a ``checkpoint-N`` that still has its COMPLETE marker but lost its weights.
    """
    if limit is not None:
        for old in list_checkpoints(output_dir)[:-limit]:
            if keep is not None and old.name == f"checkpoint-{keep}":
                continue
            trash = old.with_name(f".{old.name}.deleting")
            shutil.rmtree(trash, ignore_errors=True)
            try:
                os.replace(old, trash)
            except OSError:
                continue  # left in place: deleting it is housekeeping, not worth stopping the run
    for stale in [*output_dir.glob(".checkpoint-*.deleting"), *output_dir.glob(".checkpoint-*.old-*")]:
        shutil.rmtree(stale, ignore_errors=True)


def load_training_state(path: Path) -> TrainingState:
    """The checkpoint's training_state.json; unreadable or not a training state is a UserError naming it."""
    try:
        return TrainingState.from_json(json.loads((path / "training_state.json").read_text()))
    except (OSError, ValueError, RecursionError, TypeError, AttributeError) as err:
        raise UserError(f"{path}/training_state.json: unreadable ({one_line(err)[:200]}); "
                        "pick another checkpoint") from None


def load_checkpoint_weights(accelerator, path: Path, model) -> None:
    """Only the weights of checkpoint ``path`` into ``model`` (the prepared loss module): every rank must call it."""
    if (path / SHARDED).is_dir():
        load_sharded(model, None, path / SHARDED)
    else:
        load_weights_into(unwrap_lm(accelerator, model), path)


def load_checkpoint(accelerator, path: Path, model, optimizer, scheduler) -> TrainingState:
    """Restore weights, optimizer, scheduler and this rank's RNG; return training_state.

    A missing or unreadable file, or weights of another shape, is a UserError naming the checkpoint.
    """
    state = load_training_state(path)
    rng_file = path / f"rng_state_{accelerator.process_index}.pt"
    if not rng_file.is_file():  # resumed on more ranks than saved: derive from rank 0's
        rng_file = path / "rng_state_0.pt"
    try:
        if (path / SHARDED).is_dir():
            load_sharded(model, optimizer, path / SHARDED)
        else:
            load_weights_into(unwrap_lm(accelerator, model), path)
            load_optimizer(model, optimizer, torch.load(path / "optimizer.pt", weights_only=True,
                                                        map_location="cpu"), str(path))
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
        set_rng_state(torch.load(rng_file, weights_only=True))
    except UserError:
        raise
    except Exception as err:  # noqa: BLE001 - missing/corrupt files and shape mismatches all mean "unusable"
        raise UserError(f"{path}: cannot resume from this checkpoint ({one_line(err)[:300]}); it is damaged "
                        "or from another model — resume from an earlier checkpoint-N or start a new "
                        "--output_dir") from None
    return state
