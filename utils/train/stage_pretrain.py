"""The pre-training / CPT stage, top to bottom: start → lengths against the model → the checkpoint to resume →
the prepared text verified → claim the output → data (token windows of the text, and prepared SFT corpora mixed
in) → model → plan → restore → fit → final/ (a merged, plain HF model).

The text is a prepared text corpus (--data_dirs, scripts/01_prepare_text_corpus.py: verified like 03's corpora,
tokenizer hash and every shard's sha256, before the output is claimed), or the config's data.sources tokenized
here by the main process while the other ranks wait: a convenience for small corpora, said so in the run plan.
Those token streams are cached in the output directory, so it is claimed before they are built.
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from utils.common.config import to_dict
from utils.common.errors import UserError
from utils.common.locks import reading
from utils.data.pretrain_data import StreamStats, build_streams
from utils.data.shards import load_manifest
from utils.data.text_corpus import load_text_corpus
from utils.model.architectures import check_model_dir, check_positions
from utils.model.modeling import build_model, check_vocab_fits, load_model, model_config, weights_fingerprint
from utils.monitor.run_plan import RunPlan
from utils.sampling.example_store import ExampleStore, window_store
from utils.train.cli import PretrainInputs
from utils.train.config import PretrainConfig
from utils.train.corpora import load_corpora
from utils.train.loop import fit
from utils.train.output import own_output
from utils.train.resume import find_checkpoint, restore
from utils.train.run import TrainData, build_run, finish
from utils.train.start import RunStart, ready_to_train, start_run


def run_pretraining(cfg: PretrainConfig, inputs: PretrainInputs) -> str | None:
    """Train, save final/ and return the summary to print (None on non-main ranks)."""
    params, output_dir = cfg.training_params, inputs.output_dir
    start = start_run(params, inputs)
    accelerator, main = start.accelerator, start.accelerator.is_main_process
    if inputs.model_path:  # an unsupported architecture is refused before anything is written
        check_model_dir(inputs.model_path)
    if cfg.lora_config is not None and start.sharding != "none":
        raise UserError(f"{inputs.config_path}: lora_config with --sharding {start.sharding}: pre-training merges the "
                        "adapter into final/, which this trainer does not do for a sharded model (untested); "
                        "train this CPT without sharding, or fine-tune the full model sharded")
    _check_lengths(cfg, inputs)
    checkpoint, _ = find_checkpoint(inputs.resume_from_checkpoint, output_dir, main)
    supervised_dirs = [s.data_dir for s in cfg.data.supervised]
    with contextlib.ExitStack() as held:
        held.enter_context(reading(supervised_dirs + inputs.data_dirs))  # a prepare --force waits for this run
        prepared = _prepared_streams(inputs.data_dirs, start.fingerprint) if inputs.data_dirs else None
        held.enter_context(own_output(accelerator, inputs, "pretrain"))  # claimed after the data is verified
        train, val, stats = _windows(cfg, inputs, start, prepared)
        supervised = cfg.data.supervised
        corpora = load_corpora(supervised_dirs, start.fingerprint, accelerator) if supervised else None
        dirs = corpora.dirs if corpora else []
        model, base_sha256, lora = _model(cfg, inputs, start)
        cfg = dataclasses.replace(cfg, lora_config=lora)  # with the layers it adapts, as the run records them
        plan = _plan(cfg, inputs, train, val, stats)
        for d, source in zip(dirs, supervised):
            plan.add(f"supervised {d.path.name}", f"{len(d.train):,} examples, weight {source.weight}",
                     "data.supervised")
        run_info = {"config": to_dict(cfg), "tokenizer_sha256": start.fingerprint,
                    "data_hashes": {"text": stats.key, **corpora.hashes} if corpora else stats.key,
                    "overrides": inputs.overrides, "model_path": inputs.model_path, "base_model_sha256": base_sha256}
        data = TrainData([train] + [d.train for d in dirs], [cfg.data.text_weight] + [s.weight for s in supervised],
                         [s for s in [val] + [d.val for d in dirs] if len(s)],
                         max([cfg.data.sequence_length] + [int(d.manifest["sequence_length"]) for d in dirs]))
        run = build_run(start, model, data, params, output_dir=output_dir, run_info=run_info, plan=plan,
                        label="pre-training", resumed=checkpoint.saved if checkpoint else None)
        state = restore(run, checkpoint)
        if main:
            print(plan.render(), flush=True)
        state = fit(run, state)
        final = finish(run, state, inputs.tokenizer_path,
                       {"stage": "pretrain", **run_info, "last_eval": state.last_eval,
                        "initial_eval_loss": state.initial_eval.get("eval/loss")},
                       merge_adapter=True, title=f"pre-training {cfg.name}")
    if not main:
        return None
    initial = state.initial_eval.get("eval/loss")
    start_loss = f"{initial:.4f}" if initial is not None else "(resumed)"
    return (f"validation loss: {start_loss} -> {state.last_eval.get('eval/loss'):.4f} after {state.step} steps, "
            f"{state.tokens_seen:,} tokens\nfinal model: {final}")


def _windows(cfg: PretrainConfig, inputs: PretrainInputs, start: RunStart, prepared=None):
    """The train and val windows of the text, and their stats: the verified streams of --data_dirs
    (``prepared``), or the config's data.sources tokenized here (token streams cached in output_dir)."""
    if prepared is not None:
        streams, stats = prepared
    else:
        with start.accelerator.main_process_first():
            streams, stats = build_streams(cfg.data, start.tokenizer, start.fingerprint,
                                           inputs.output_dir / "data_cache",
                                           show_progress=start.accelerator.is_main_process)
    train, val = _pretrain_stores(streams, cfg.data.sequence_length)
    if len(train) == 0:
        where = f"--data_dirs {' '.join(inputs.data_dirs)}" if inputs.data_dirs else f"{inputs.config_path}: " \
            "data.sources"
        raise UserError(f"{where} hold {stats.tokens['train']} training tokens, less than one sequence of "
                        f"{cfg.data.sequence_length}; add text or shorten sequence_length")
    return train, val, stats


def _prepared_streams(data_dirs: list[str], fingerprint: str) -> tuple[dict[str, np.ndarray], StreamStats]:
    """The token streams of prepared text corpora, verified and joined in the order given; the stats' key hashes
    every train shard's sha256, so a resume on other data is refused."""
    names = [Path(d).name for d in data_dirs]
    if len(set(names)) != len(names):
        raise UserError(f"--data_dirs: two directories share a name ({names}); give each corpus its own name")
    stats, parts, digest = StreamStats(), {"train": [], "val": []}, hashlib.sha256()
    for raw in data_dirs:
        manifest, streams = load_text_corpus(raw, fingerprint)
        for split in parts:
            parts[split].append(streams[split])
            stats.documents[split] += manifest["splits"][split]["documents"]
            stats.tokens[split] += manifest["splits"][split]["total_tokens"]
        digest.update("".join([Path(raw).name] + [s["sha256"] for s in manifest["splits"]["train"]["shards"]])
                      .encode())
    stats.key = digest.hexdigest()[:16]
    return {k: v[0] if len(v) == 1 else np.concatenate(v) for k, v in parts.items()}, stats


def _plan(cfg: PretrainConfig, inputs: PretrainInputs, train, val, stats) -> RunPlan:
    plan = RunPlan()
    plan.add("model", inputs.model_path or "new preset", "--model_path" if inputs.model_path else "config model")
    if inputs.data_dirs:
        plan.add("text", f"prepared corpora {', '.join(inputs.data_dirs)} (verified: tokenizer, every shard's "
                 "sha256)", "--data_dirs (the config's data.sources and val_ratio are not read)")
    else:
        plan.add("text", "data.sources tokenized at launch by the main process (a convenience for small corpora; "
                 "prepare large ones ahead with scripts/01_prepare_text_corpus.py)", "config data.sources")
    plan.add("sequence length", cfg.data.sequence_length, "data.sequence_length")
    plan.add("train sequences", len(train), f"{stats.documents['train']:,} documents")
    plan.add("validation sequences", len(val), "the corpora's val split" if inputs.data_dirs
             else f"data.val_ratio {cfg.data.val_ratio}")
    return plan


def _pretrain_stores(streams: dict[str, np.ndarray], sequence_length: int) -> tuple[ExampleStore, ExampleStore]:
    """Fixed-length windows of the train and val streams."""
    return (window_store("train", streams["train"], sequence_length),
            window_store("val", streams["val"], sequence_length))


def _check_lengths(cfg: PretrainConfig, inputs: PretrainInputs) -> None:
    """Windows of data.sequence_length (and the supervised corpora's rows) within the model's positions, checked
    from the configs before the output directory is claimed."""
    config = (model_config(inputs.model_path, inputs.trust_remote_code) if inputs.model_path
              else SimpleNamespace(max_position_embeddings=cfg.model.max_position_embeddings))
    fix = ("lower data.sequence_length (and prepare data.supervised corpora with a smaller "
           "output_params.sequence_length), or use a model with more positions"
           + ("" if inputs.model_path else " (model.max_position_embeddings)"))
    where = f"--model_path {inputs.model_path}" if inputs.model_path else f"{inputs.config_path}: model"
    check_positions(config, cfg.data.sequence_length, where, "data.sequence_length", fix)
    for source in cfg.data.supervised:
        length = int(load_manifest(Path(source.data_dir))["sequence_length"])
        check_positions(config, length, where, f"data.supervised {source.data_dir} (prepared with "
                        f"output_params.sequence_length {length})", fix)


def _model(cfg: PretrainConfig, inputs: PretrainInputs, start: RunStart):
    """The model ready to train, the fingerprint of the weights LoRA (CPT) adapts, and the LoRA settings with the
    layers it adapts (None for full training)."""
    where = inputs.model_path or "preset"
    if inputs.model_path:
        model = load_model(inputs.model_path, trust_remote_code=inputs.trust_remote_code)
    else:
        model = build_model(cfg.model, start.tokenizer, cfg.training_params.seed)
    check_vocab_fits(model, start.tokenizer, where, inputs.tokenizer_path)
    base_sha256 = weights_fingerprint(model) if inputs.model_path else None
    model, lora = ready_to_train(model, cfg.lora_config, cfg.training_params, where)
    return model, base_sha256, lora
