"""Pre-training / CPT wiring: text → token windows → the shared training loop → final/."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from accelerate.utils import set_seed
from tqdm import tqdm

from utils.checkpoint.checkpoints import resolve_resume
from utils.checkpoint.final_model import save_final
from utils.common.errors import UserError
from utils.data.fingerprint import tokenizer_fingerprint
from utils.data.pretrain_data import PretrainData, build_streams
from utils.data.tokenizer import hf_dir_for, load_tokenizer
from utils.model.modeling import ModelArchitecture, build_model, check_vocab_fits, load_model
from utils.monitor.plots import plot_training
from utils.monitor.run_plan import RunPlan
from utils.parallel.accelerator import make_accelerator
from utils.sampling.example_store import ExampleStore, window_store
from utils.parallel.lora import LoraSettings, apply_lora
from utils.train.loop import evaluate, fit
from utils.train.params import TrainingParams
from utils.train.run_setup import build_run


@dataclass
class PretrainConfig:
    """config/pretrain/*.json (schema: config/schemas/pretrain.schema.json)."""

    name: str
    data: PretrainData
    training_params: TrainingParams
    model: ModelArchitecture = field(default_factory=ModelArchitecture)
    lora_config: LoraSettings | None = None
    description: str = ""


def run_pretraining(cfg, resolved: dict, args, output_dir: Path, overrides: dict) -> str | None:
    """Train, save final/ and return the summary to print (None on non-main ranks)."""
    params = cfg.training_params
    accelerator = make_accelerator(params.mixed_precision())
    set_seed(params.seed)
    tokenizer = load_tokenizer(args.tokenizer_path)
    fingerprint = tokenizer_fingerprint(hf_dir_for(args.tokenizer_path))
    with accelerator.main_process_first():
        streams, stats = build_streams(cfg.data, tokenizer, fingerprint, output_dir / "data_cache",
                                       show_progress=accelerator.is_main_process)
    train, val = pretrain_stores(streams, cfg.data.sequence_length)
    if len(train) == 0:
        raise UserError(f"{args.config}: data.sources hold {stats.tokens['train']} training tokens, less "
                        f"than one sequence of {cfg.data.sequence_length}; add text or shorten sequence_length")
    model = _model(cfg, args, tokenizer, params.seed)
    plan = RunPlan()
    plan.add("model", args.model_path or "new preset", "--model_path" if args.model_path else "config model")
    plan.add("sequence length", cfg.data.sequence_length, "data.sequence_length")
    plan.add("train sequences", len(train), f"{stats.documents['train']:,} documents")
    plan.add("validation sequences", len(val), f"data.val_ratio {cfg.data.val_ratio}")
    run_info = {"config": resolved, "tokenizer_sha256": fingerprint, "data_hashes": stats.key,
                "overrides": overrides}
    resume = resolve_resume(args.resume_from_checkpoint, output_dir)
    run, state = build_run(accelerator, model, [train], [val] if len(val) else [], [1.0], params,
                           output_dir, run_info, resume, plan, cfg.data.sequence_length)
    if accelerator.is_main_process:
        print(plan.render(), flush=True)
    initial = evaluate(run).get("eval/loss") if run.val_stores and state.step == 0 else None
    run.progress = tqdm(total=run.total_steps, initial=state.step, desc="pre-training",
                        disable=not accelerator.is_main_process)
    state = fit(run, state)
    run.progress.close()
    final = save_final(accelerator, run.loss_module, output_dir / "final", args.tokenizer_path,
                       {"stage": "pretrain", **run_info, "last_eval": state.last_eval,
                        "initial_eval_loss": initial}, merge_adapter=True)
    run.logger.close()
    if not accelerator.is_main_process:
        return None
    plot_training(output_dir / "metrics.jsonl", output_dir / "loss.png", f"pre-training {cfg.name}")
    final_loss = state.last_eval.get("eval/loss")
    start = f"{initial:.4f}" if initial is not None else "(resumed)"
    return (f"validation loss: {start} -> {final_loss:.4f} after {state.step} steps, "
            f"{state.tokens_seen:,} tokens\nfinal model: {final}")


def pretrain_stores(streams: dict[str, np.ndarray], sequence_length: int) -> tuple[ExampleStore, ExampleStore]:
    """Fixed-length windows of the train and val streams."""
    return (window_store("train", streams["train"], sequence_length),
            window_store("val", streams["val"], sequence_length))


def _model(cfg, args, tokenizer, seed: int):
    if args.model_path:
        model = load_model(args.model_path, trust_remote_code=args.trust_remote_code)
    else:
        model = build_model(cfg.model, tokenizer, seed)
    check_vocab_fits(model, tokenizer, args.model_path or "preset", args.tokenizer_path)
    return apply_lora(model, cfg.lora_config) if cfg.lora_config else model
