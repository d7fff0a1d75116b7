"""The pre-training / CPT stage: the recipe (utils/train/recipe.py) given the stage's checks (lengths against the
model), data (token windows of the text, and prepared SFT corpora mixed in), model and record: start → checks →
the checkpoint to resume → data → model → claim the output → plan → restore → fit → final/ (a merged, plain HF
model).

The text is a prepared text corpus (--data_dirs, scripts/01_prepare_text_corpus.py: verified like 03's corpora,
tokenizer hash and every shard's sha256, before the output is claimed), or the config's data.sources tokenized
here by the main process while the other ranks wait: a convenience for small corpora, said so in the run plan.
Those token streams are cached in the output directory, so it is claimed before they are built.
"""
from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from utils.checkpoint.record import StageRecord
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
from utils.train.recipe import Stage, train
from utils.train.run import TrainData, finish
from utils.train.start import RunStart, ready_to_train


def run_pretraining(cfg: PretrainConfig, inputs: PretrainInputs) -> str | None:
    """Train, save final/ and return the summary to print (None on non-main ranks)."""
    trained = train(PretrainStage(cfg, inputs))
    if trained.final is None:
        return None
    state = trained.state
    initial = state.initial_eval.get("eval/loss")
    start_loss = f"{initial:.4f}" if initial is not None else "(resumed)"
    return (f"validation loss: {start_loss} -> {state.last_eval.get('eval/loss'):.4f} after {state.step} steps, "
            f"{state.tokens_seen:,} tokens\nfinal model: {trained.final}")


class PretrainStage(Stage):
    """Pre-training a preset, or CPT of a model (full or LoRA, merged into final/), on token windows of the config's
    text and prepared SFT corpora mixed in."""

    kind, label = "pretrain", "pre-training"

    @property
    def claims_output_first(self) -> bool:
        """Text tokenized here is cached in the output directory, so that is claimed first; a prepared text corpus
        (--data_dirs) is verified before anything is claimed."""
        return not self.inputs.data_dirs

    def __init__(self, cfg: PretrainConfig, inputs: PretrainInputs) -> None:
        super().__init__(cfg.training_params, inputs)
        self.cfg = cfg

    def check(self, start: RunStart) -> None:
        cfg, inputs = self.cfg, self.inputs
        if inputs.model_path:  # an unsupported architecture is refused before anything is written
            check_model_dir(inputs.model_path)
        if cfg.lora_config is not None and start.sharding != "none":
            raise UserError(f"{inputs.config_path}: lora_config with --sharding {start.sharding}: pre-training "
                            "merges the adapter into final/, which this trainer does not do for a sharded model "
                            "(untested); train this CPT without sharding, or fine-tune the full model sharded")
        _check_lengths(cfg, inputs)

    def data(self, start: RunStart, checkpoint, held) -> TrainData:
        cfg, inputs = self.cfg, self.inputs
        supervised = cfg.data.supervised
        supervised_dirs = [s.data_dir for s in supervised]
        held.enter_context(reading(supervised_dirs + inputs.data_dirs))  # a prepare --force waits for this run
        prepared = _prepared_streams(inputs.data_dirs, start.fingerprint) if inputs.data_dirs else None
        train, val, self.stats = _windows(cfg, inputs, start, prepared)
        self.train, self.val = train, val
        self.corpora = load_corpora(supervised_dirs, start.fingerprint, start.accelerator) if supervised else None
        dirs = self.corpora.dirs if self.corpora else []
        return TrainData([train] + [d.train for d in dirs], [cfg.data.text_weight] + [s.weight for s in supervised],
                         [s for s in [val] + [d.val for d in dirs] if len(s)],
                         max([cfg.data.sequence_length] + [int(d.manifest["sequence_length"]) for d in dirs]))

    def model(self, start: RunStart):
        cfg = dataclasses.replace(self.cfg, training_params=self.params)  # its auto switches resolved
        inputs, corpora = self.inputs, self.corpora
        model, base_sha256, lora = _model(cfg, inputs, start)
        self.cfg = cfg = dataclasses.replace(cfg, lora_config=lora)  # with the layers it adapts, as recorded
        return model, StageRecord(
            config=to_dict(cfg), tokenizer_sha256=start.fingerprint,
            data_hashes={"text": self.stats.key, **corpora.hashes} if corpora else self.stats.key,
            overrides=inputs.overrides, model_path=inputs.model_path, base_model_sha256=base_sha256)

    def plan(self) -> RunPlan:
        plan = _plan(self.cfg, self.inputs, self.train, self.val, self.stats)
        for d, source in zip(self.corpora.dirs if self.corpora else [], self.cfg.data.supervised):
            plan.add(f"supervised {d.path.name}", f"{len(d.train):,} examples, weight {source.weight}",
                     "data.supervised")
        return plan

    def final(self, run, state, record: StageRecord) -> Path | None:
        return finish(run, state, self.inputs.tokenizer_path,
                      {"stage": "pretrain", **record.to_json(), "last_eval": state.last_eval,
                       "initial_eval_loss": state.initial_eval.get("eval/loss")},
                      merge_adapter=True, title=f"pre-training {self.cfg.name}")


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
