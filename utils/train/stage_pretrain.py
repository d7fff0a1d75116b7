"""Pre-training / CPT wiring: text → token windows → the shared training loop → final/."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from utils.checkpoint.checkpoints import resolve_resume
from utils.checkpoint.final_model import save_final
from utils.common.config import to_dict
from utils.common.errors import UserError
from utils.data.pretrain_data import PretrainData, build_streams
from utils.model.architectures import check_model_dir
from utils.model.modeling import ModelArchitecture, build_model, check_vocab_fits, load_model
from utils.monitor.plots import plot_training
from utils.monitor.run_plan import RunPlan
from utils.parallel.lora import LoraSettings
from utils.sampling.example_store import ExampleStore, window_store
from utils.train.cli import RunInputs
from utils.train.loop import best_record, evaluate, fit
from utils.train.params import TrainingParams
from utils.train.run_setup import adapt_model, build_run, own_output, start_stage
from utils.train.stage_sft import data_hashes, load_data_dirs


@dataclass
class PretrainConfig:
    """config/pretrain/*.json (schema: config/schemas/pretrain.schema.json)."""

    name: str
    data: PretrainData
    training_params: TrainingParams
    model: ModelArchitecture = field(default_factory=ModelArchitecture)
    lora_config: LoraSettings | None = None
    description: str = ""


@dataclass(kw_only=True)
class PretrainInputs(RunInputs):
    """What scripts/01_pretrain.py passes besides the config."""

    config_path: str
    """The config file, named in errors."""
    model_path: str | None = None
    """Continue pre-training this HF checkpoint (CPT) instead of building the config's preset."""
    overrides: dict = field(default_factory=dict)
    """{field: flag} of the training params set on the command line, for the run record."""


def run_pretraining(cfg: PretrainConfig, inputs: PretrainInputs) -> str | None:
    """Train, save final/ and return the summary to print (None on non-main ranks)."""
    accelerator, tokenizer, fingerprint = start_stage(cfg.training_params, inputs.tokenizer_path, inputs.output_dir)
    if inputs.model_path:  # an unsupported architecture is refused before anything is written
        check_model_dir(inputs.model_path)
    with own_output(accelerator, inputs, "pretrain"):
        return _train(cfg, inputs, accelerator, tokenizer, fingerprint)


def _train(cfg: PretrainConfig, inputs: PretrainInputs, accelerator, tokenizer, fingerprint: str) -> str | None:
    params, output_dir = cfg.training_params, inputs.output_dir
    train, val, stats = _windows(cfg, inputs, accelerator, tokenizer, fingerprint)
    with accelerator.main_process_first():  # rank 0 fills the store cache, the others then read it
        dirs = load_data_dirs([s.data_dir for s in cfg.data.supervised], fingerprint) if cfg.data.supervised else []
    model = _model(cfg, inputs, tokenizer, params.seed)
    plan = _plan(cfg, inputs, train, val, stats)
    stores = [train] + [d.train for d in dirs]
    weights = [cfg.data.text_weight] + [s.weight for s in cfg.data.supervised]
    val_stores = [s for s in [val] + [d.val for d in dirs] if len(s)]
    for d, source in zip(dirs, cfg.data.supervised):
        plan.add(f"supervised {d.path.name}", f"{len(d.train):,} examples, weight {source.weight}",
                 "data.supervised")
    hashes = {"text": stats.key, **data_hashes(dirs)} if dirs else stats.key
    run_info = {"config": to_dict(cfg), "tokenizer_sha256": fingerprint, "data_hashes": hashes,
                "overrides": inputs.overrides}
    resume = resolve_resume(inputs.resume_from_checkpoint, output_dir, accelerator.is_main_process)
    longest = max([cfg.data.sequence_length] + [int(d.manifest["sequence_length"]) for d in dirs])
    run, state = build_run(accelerator, model, stores, val_stores, weights, params,
                           output_dir, run_info, resume, plan, longest)
    if accelerator.is_main_process:
        print(plan.render(), flush=True)
    initial = evaluate(run).get("eval/loss") if run.val_stores and state.step == 0 else None
    run.progress = tqdm(total=run.total_steps, initial=state.step, desc="pre-training",
                        disable=not accelerator.is_main_process)
    state = fit(run, state)
    run.progress.close()
    final = save_final(accelerator, run.loss_module, output_dir / "final", inputs.tokenizer_path,
                       {"stage": "pretrain", **run_info, "last_eval": state.last_eval,
                        "initial_eval_loss": initial, "best_checkpoint": best_record(state, run.params)},
                       merge_adapter=True)
    run.logger.close()
    if not accelerator.is_main_process:
        return None
    plot_training(output_dir / "metrics.jsonl", output_dir / "loss.png", f"pre-training {cfg.name}")
    start = f"{initial:.4f}" if initial is not None else "(resumed)"
    return (f"validation loss: {start} -> {state.last_eval.get('eval/loss'):.4f} after {state.step} steps, "
            f"{state.tokens_seen:,} tokens\nfinal model: {final}")


def _windows(cfg: PretrainConfig, inputs: PretrainInputs, accelerator, tokenizer, fingerprint: str):
    """The train and val windows of the config's text (token streams cached in output_dir), and their stats."""
    with accelerator.main_process_first():
        streams, stats = build_streams(cfg.data, tokenizer, fingerprint, inputs.output_dir / "data_cache",
                                       show_progress=accelerator.is_main_process)
    train, val = pretrain_stores(streams, cfg.data.sequence_length)
    if len(train) == 0:
        raise UserError(f"{inputs.config_path}: data.sources hold {stats.tokens['train']} training tokens, less "
                        f"than one sequence of {cfg.data.sequence_length}; add text or shorten sequence_length")
    return train, val, stats


def _plan(cfg: PretrainConfig, inputs: PretrainInputs, train, val, stats) -> RunPlan:
    plan = RunPlan()
    plan.add("model", inputs.model_path or "new preset", "--model_path" if inputs.model_path else "config model")
    plan.add("sequence length", cfg.data.sequence_length, "data.sequence_length")
    plan.add("train sequences", len(train), f"{stats.documents['train']:,} documents")
    plan.add("validation sequences", len(val), f"data.val_ratio {cfg.data.val_ratio}")
    return plan


def pretrain_stores(streams: dict[str, np.ndarray], sequence_length: int) -> tuple[ExampleStore, ExampleStore]:
    """Fixed-length windows of the train and val streams."""
    return (window_store("train", streams["train"], sequence_length),
            window_store("val", streams["val"], sequence_length))


def _model(cfg: PretrainConfig, inputs: PretrainInputs, tokenizer, seed: int):
    if inputs.model_path:
        model = load_model(inputs.model_path, trust_remote_code=inputs.trust_remote_code)
    else:
        model = build_model(cfg.model, tokenizer, seed)
    check_vocab_fits(model, tokenizer, inputs.model_path or "preset", inputs.tokenizer_path)
    model, cfg.lora_config = adapt_model(model, cfg.lora_config, inputs.model_path or "preset")
    return model
