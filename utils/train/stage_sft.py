"""SFT wiring: verified data dirs → weighted packed steps → the shared training loop → final/."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from utils.checkpoint.checkpoints import load_training_state, resolve_resume
from utils.checkpoint.final_model import save_final
from utils.common.atomic import write_text_atomic
from utils.common.config import to_dict
from utils.common.errors import UserError
from utils.data.shards import verify_data_dir
from utils.data.templates import get_template
from utils.model.generation import GenerationSettings, generate_responses
from utils.model.modeling import check_vocab_fits
from utils.monitor.plots import plot_training
from utils.monitor.run_plan import RunPlan
from utils.parallel.lora import LoraSettings
from utils.parallel.state_dict import unwrap_lm
from utils.sampling.example_store import ExampleStore, load_sft_store
from utils.train.cli import RunInputs
from utils.train.loop import best_record, evaluate, fit
from utils.train.params import QuantizationParams, TrainingParams
from utils.train.qlora import check_quantizable, describe_base, load_base
from utils.train.run_setup import adapt_model, build_run, own_output, start_stage


@dataclass
class EvaluationConfig:
    eval_prompts: list[str] = field(default_factory=list)
    system_prompt: str | None = None
    generation_config: GenerationSettings = field(default_factory=GenerationSettings)


@dataclass
class SFTTrainingConfig:
    """config/sft_training/*.json (schema: config/schemas/sft_training.schema.json)."""

    name: str
    training_params: TrainingParams
    lora_config: LoraSettings | None = None
    quantization: QuantizationParams | None = None
    data_weights: dict = field(default_factory=dict)
    evaluation_config: EvaluationConfig = field(default_factory=EvaluationConfig)
    description: str = ""

    def __post_init__(self) -> None:
        if self.quantization is not None and self.lora_config is None:
            raise ValueError("quantization: a 4-bit base cannot be fine-tuned in full (its weights are frozen "
                             "4-bit integers); add a lora_config block (QLoRA) or remove quantization")


@dataclass
class DataDir:
    path: Path
    manifest: dict
    train: ExampleStore
    val: ExampleStore


def load_data_dirs(paths: list[str], tokenizer_sha: str) -> list[DataDir]:
    """Verify every manifest and shard, check the tokenizer, and load the token arrays."""
    dirs = []
    for raw in paths:
        path = Path(raw)
        manifest = verify_data_dir(path, tokenizer_sha)
        dirs.append(DataDir(path, manifest, load_sft_store(path, "train", manifest),
                            load_sft_store(path, "val", manifest)))
        if len(dirs[-1].train) == 0:
            raise UserError(f"{path}: the train split is empty; re-run the prepare stage with more data")
    templates = {d.manifest["template"]["name"] for d in dirs}
    if len(templates) > 1:
        raise UserError(f"--data_dirs use different chat templates ({', '.join(sorted(templates))}); "
                        "prepare every corpus with the same template")
    names = [d.path.name for d in dirs]
    if len(set(names)) != len(names):
        raise UserError(f"--data_dirs: two directories share a name ({names}); names identify sources")
    return dirs


def resolve_weights(dirs: list[DataDir], cli: list[float] | None, configured: dict) -> tuple[list[float], str]:
    """Per-dir sampling weights and where they came from."""
    if cli:
        if len(cli) != len(dirs):
            raise UserError(f"--data_weights: {len(cli)} weights for {len(dirs)} --data_dirs; give one per dir")
        return list(cli), "--data_weights"
    unknown = set(configured) - {d.path.name for d in dirs}
    if unknown:
        raise UserError(f"data_weights: {sorted(unknown)} name no --data_dirs entry "
                        f"(names: {[d.path.name for d in dirs]})")
    if configured:
        weights = [float(configured.get(d.path.name, 1.0)) for d in dirs]
        if not any(w > 0 for w in weights):
            raise UserError(f"data_weights: all weights are 0 ({configured}); give at least one weight > 0")
        return weights, "config data_weights"
    return [float(len(d.train)) for d in dirs], "proportional to size"


def data_hashes(dirs: list[DataDir]) -> dict:
    """What a checkpoint remembers of its data: every train shard's sha256 per dir."""
    return {d.path.name: [s["sha256"] for s in d.manifest["splits"]["train"]["shards"]] for d in dirs}


@dataclass(kw_only=True)
class SFTInputs(RunInputs):
    """What scripts/03_sft_industrial.py passes besides the config."""

    model_path: str
    """HF model dir, pre-training output, or .gguf file."""
    data_dirs: list[str]
    """Prepared corpora (scripts/02_prepare_sft_corpus.py); each directory's name names its source."""
    data_weights: list[float] | None = None
    """Sampling weight per data dir (else the config's data_weights, else proportional to size)."""


def run_sft(cfg: SFTTrainingConfig, inputs: SFTInputs) -> str | None:
    """Train; write checkpoints, metrics, samples, final/ and a plot; return the summary."""
    accelerator, tokenizer, fingerprint = start_stage(cfg.training_params, inputs.tokenizer_path, inputs.output_dir)
    if cfg.quantization is not None:  # refused before the output directory is claimed
        check_quantizable(cfg.quantization, cfg.lora_config, inputs.model_path, accelerator,
                          inputs.trust_remote_code)
    with accelerator.main_process_first():
        dirs = load_data_dirs(inputs.data_dirs, fingerprint)
    model = _model(cfg, inputs, tokenizer)  # inputs that cannot train are refused before anything is written
    with own_output(accelerator, inputs, "sft"):
        return _train(cfg, inputs, accelerator, tokenizer, fingerprint, dirs, model)


def _train(cfg: SFTTrainingConfig, inputs: SFTInputs, accelerator, tokenizer, fingerprint: str,
           dirs: list[DataDir], model) -> str | None:
    params, output_dir = cfg.training_params, inputs.output_dir
    weights, weights_from = resolve_weights(dirs, inputs.data_weights, cfg.data_weights)
    resume = resolve_resume(inputs.resume_from_checkpoint, output_dir, accelerator.is_main_process)
    dirs, weights = _checkpoint_order(resume, dirs, weights, accelerator.is_main_process)
    plan = _plan(cfg, dirs, weights, weights_from, inputs)
    run_info = _run_info(cfg, inputs, fingerprint, dirs, weights)
    run, state = build_run(accelerator, model, [d.train for d in dirs], _val_stores(dirs), weights, params,
                           output_dir, run_info, resume, plan, max(int(d.train.lengths.max()) for d in dirs))
    run.on_eval = _sampler(run, cfg.evaluation_config, tokenizer, dirs[0].manifest, output_dir)
    if accelerator.is_main_process:
        _drop_samples_after(output_dir / "samples.jsonl", state.step)
        print(plan.render(), flush=True)
    initial = evaluate(run) if run.val_stores and state.step == 0 else {}
    run.progress = tqdm(total=run.total_steps, initial=state.step, desc="sft",
                        disable=not accelerator.is_main_process)
    with run.progress, _oom_hint():  # closed on errors too, so an error line starts a line of its own
        state = fit(run, state)
    final = save_final(accelerator, run.loss_module, output_dir / "final", inputs.tokenizer_path,
                       {"stage": "sft", **run_info, "initial_eval": initial, "last_eval": state.last_eval,
                        "steps": state.step, "tokens_seen": state.tokens_seen,
                        "best_checkpoint": best_record(state, run.params)},
                       merge_adapter=False, stop_token_ids=dirs[0].manifest["template"].get("stop_token_ids"))
    run.logger.close()
    if not accelerator.is_main_process:
        return None
    plot_training(output_dir / "metrics.jsonl", output_dir / "loss.png", f"SFT {cfg.name}")
    return _summary(initial, state, final)


def _checkpoint_order(resume, dirs: list[DataDir], weights: list[float], main: bool):
    """On resume, the data dirs (and their weights) in the checkpoint's order: sources are matched by name."""
    if resume is None:
        return dirs, weights
    saved = [Path(p).name for p in load_training_state(resume).get("data_dirs", [])]
    names = [d.path.name for d in dirs]
    if saved == names or sorted(saved) != sorted(names):
        return dirs, weights  # same order, or other data: the data hash check names the difference
    order = [names.index(n) for n in saved]
    if main:
        print(f"--data_dirs: matched to the checkpoint's sources by name ({', '.join(saved)})", flush=True)
    return [dirs[i] for i in order], [weights[i] for i in order]


def _model(cfg: SFTTrainingConfig, inputs: SFTInputs, tokenizer):
    model = load_base(inputs.model_path, cfg.quantization, inputs.trust_remote_code)
    check_vocab_fits(model, tokenizer, inputs.model_path, inputs.tokenizer_path)
    model, cfg.lora_config = adapt_model(model, cfg.lora_config, inputs.model_path)
    return model


def _val_stores(dirs: list[DataDir]) -> list[ExampleStore]:
    """One validation store per source of every dir, the empty ones left out."""
    return [s for d in dirs for s in d.val.by_source() if len(s)]


def _run_info(cfg: SFTTrainingConfig, inputs: SFTInputs, fingerprint: str, dirs: list[DataDir],
              weights: list[float]) -> dict:
    """What each checkpoint and final/ record of the run (resume checks the tokenizer and data hashes)."""
    return {"config": to_dict(cfg), "tokenizer_sha256": fingerprint, "data_hashes": data_hashes(dirs),
            "model_path": str(inputs.model_path), "data_dirs": [str(d.path) for d in dirs],
            "data_weights": weights, "template": dirs[0].manifest["template"]}


def _plan(cfg: SFTTrainingConfig, dirs: list[DataDir], weights: list[float], weights_from: str,
          inputs: SFTInputs) -> RunPlan:
    plan = RunPlan()
    plan.add("model", str(inputs.model_path), "--model_path")
    if cfg.quantization is not None:
        plan.add("base weights", describe_base(cfg.quantization, inputs.model_path), "quantization")
    total = sum(weights)
    for d, w in zip(dirs, weights):
        plan.add(f"data {d.path.name}", f"{len(d.train):,} train / {len(d.val):,} val, "
                 f"weight {w / total:.2f}", weights_from)
    plan.add("template", dirs[0].manifest["template"]["name"], "data manifest")
    return plan


def _summary(initial: dict, state, final: Path) -> str:
    before = initial.get("eval/loss")
    after = state.last_eval.get("eval/loss")
    lines = [f"trained {state.step} steps, {state.tokens_seen:,} tokens "
             f"({state.supervised_seen:,} supervised)"]
    if before is not None and after is not None:
        lines.append(f"validation loss: {before:.4f} -> {after:.4f} "
                     f"(perplexity {initial['eval/ppl']:.2f} -> {state.last_eval['eval/ppl']:.2f})")
    if state.best_step and state.best_step != state.step:
        lines.append(f"final/ holds the best checkpoint: step {state.best_step}, "
                     f"validation loss {state.best_eval_loss:.4f} (load_best_model_at_end)")
    lines.append(f"final: {final}")
    return "\n".join(lines)


@contextlib.contextmanager
def _oom_hint():
    try:
        yield
    except torch.OutOfMemoryError:
        raise UserError("out of memory: lower training_params.micro_batch_tokens (or "
                        "per_device_train_batch_size), turn on gradient_checkpointing, or lower "
                        "lora_config.r") from None
    except RuntimeError as err:
        if "can't allocate memory" not in str(err) and "out of memory" not in str(err):
            raise
        raise UserError("out of memory: lower training_params.micro_batch_tokens (or "
                        "per_device_train_batch_size), turn on gradient_checkpointing, or lower "
                        "lora_config.r") from None


def _drop_samples_after(path: Path, step: int) -> None:
    """On resume, forget the samples an interrupted run wrote after its checkpoint (they are made again)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        with contextlib.suppress(ValueError, AttributeError):
            if int(json.loads(line).get("step", 0)) <= step:
                kept.append(line + "\n")
    write_text_atomic(path, "".join(kept))


def _sampler(run, eval_cfg: EvaluationConfig, tokenizer, manifest: dict, output_dir: Path):
    """Generation samples of the eval prompts, written to samples.jsonl on the main process."""
    if not eval_cfg.eval_prompts:
        return None
    template = get_template(manifest["template"]["name"], tokenizer)

    def sample(step: int) -> dict:
        if not run.accelerator.is_main_process:
            return {}
        model = unwrap_lm(run.accelerator, run.loss_module)
        conversations = [([{"role": "system", "content": eval_cfg.system_prompt}] if eval_cfg.system_prompt
                          else []) + [{"role": "user", "content": p}] for p in eval_cfg.eval_prompts]
        with torch.random.fork_rng(devices=[]):  # sampling must not move the training RNG
            results = generate_responses(model, tokenizer, template, conversations, eval_cfg.generation_config)
        with open(output_dir / "samples.jsonl", "a", encoding="utf-8") as handle:
            for prompt, result in zip(eval_cfg.eval_prompts, results):
                handle.write(json.dumps({"step": step, "prompt": prompt, "response": result.text,
                                         "finished": result.finished}, ensure_ascii=False) + "\n")
        return {"samples/finished_rate": sum(r.finished for r in results) / len(results)}

    return sample
