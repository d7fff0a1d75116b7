"""The SFT stage: the recipe (utils/train/recipe.py: start → check → resume point → data → model → claim the
output → plan → restore → fit → final/) given the stage's corpora (in the checkpoint's order on resume), base
model, eval samples and record.

Data, model and the checkpoint named by --resume_from_checkpoint are read before the output directory is claimed,
so inputs that cannot train are refused before anything is written.
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
from pathlib import Path

import torch

from utils.checkpoint.record import SFTRecord
from utils.common.config import to_dict
from utils.common.locks import reading
from utils.common.publish import write_text_atomic
from utils.data.templates import get_template
from utils.model.generation import generate_responses
from utils.model.architectures import check_positions
from utils.model.modeling import check_vocab_fits, weights_fingerprint
from utils.monitor.run_plan import RunPlan
from utils.parallel.fsdp import gathered
from utils.parallel.quantization import load_base
from utils.parallel.state_dict import unwrap_lm
from utils.train.cli import SFTInputs
from utils.train.config import EvaluationConfig, SFTTrainingConfig
from utils.train.corpora import Corpora, load_corpora, matched_to_checkpoint
from utils.train.loop import TrainState
from utils.train.qlora import check_quantizable, describe_base
from utils.train.recipe import Stage, train
from utils.train.run import TrainData, finish
from utils.train.start import RunStart, ready_to_train

SAMPLES = "samples.jsonl"
"""Responses to the config's eval prompts at each evaluation, one JSON line each."""


def run_sft(cfg: SFTTrainingConfig, inputs: SFTInputs) -> str | None:
    """Train; write checkpoints, metrics, samples, final/ and a plot; return the summary (None on other ranks)."""
    trained = train(SFTStage(cfg, inputs))
    return _summary(trained.state, trained.final) if trained.final is not None else None


class SFTStage(Stage):
    """SFT on prepared corpora: LoRA, QLoRA or full fine-tuning of a base model."""

    kind, label = "sft", "sft"

    def __init__(self, cfg: SFTTrainingConfig, inputs: SFTInputs) -> None:
        super().__init__(cfg.training_params, inputs)
        self.cfg = cfg

    def check(self, start: RunStart) -> None:
        cfg, inputs = self.cfg, self.inputs
        if cfg.quantization is not None:
            check_quantizable(cfg.quantization, cfg.lora_config, inputs.model_path, start.sharding,
                              inputs.trust_remote_code)

    def data(self, start: RunStart, checkpoint, held: contextlib.ExitStack) -> TrainData:
        inputs = self.inputs
        held.enter_context(reading(inputs.data_dirs))  # 02 --force cannot replace a corpus this run reads
        corpora = load_corpora(inputs.data_dirs, start.fingerprint, start.accelerator, inputs.data_weights,
                               self.cfg.data_weights)
        recorded = (checkpoint.saved.run_record(SFTRecord).data_dirs or []) if checkpoint else None
        self.corpora = corpora = matched_to_checkpoint(corpora, recorded, start.accelerator.is_main_process)
        self.template = corpora.dirs[0].manifest["template"]
        self.generation = get_template(self.template["name"], start.tokenizer)
        return TrainData([d.train for d in corpora.dirs], corpora.weights, corpora.val_stores, corpora.longest)

    def model(self, start: RunStart):
        cfg, inputs = dataclasses.replace(self.cfg, training_params=self.params), self.inputs  # auto resolved
        model = load_base(inputs.model_path, to_dict(cfg.quantization) if cfg.quantization else None,
                          inputs.trust_remote_code)
        check_vocab_fits(model, start.tokenizer, inputs.model_path, inputs.tokenizer_path)
        _check_lengths(cfg, inputs, self.corpora, self.generation, model.config)
        base_sha256 = weights_fingerprint(model)  # before LoRA: what an adapter's resume must find again
        model, lora = ready_to_train(model, cfg.lora_config, cfg.training_params, inputs.model_path)
        self.cfg = cfg = dataclasses.replace(cfg, lora_config=lora)  # with the layers it adapts, as recorded
        if cfg.evaluation_config.eval_prompts:
            self.on_eval = _EvalSamples(cfg.evaluation_config, self.generation, start.tokenizer,
                                        inputs.output_dir / SAMPLES)
        return model, _record(cfg, inputs, start.fingerprint, self.corpora, base_sha256)

    def plan(self) -> RunPlan:
        return _plan(self.cfg, self.corpora, self.inputs)

    def restored(self, state: TrainState) -> None:
        _drop_samples_after(self.inputs.output_dir / SAMPLES, state.step)

    def final(self, run, state: TrainState, record: SFTRecord) -> Path | None:
        return finish(run, state, self.inputs.tokenizer_path,
                      {"stage": "sft", **record.to_json(), "initial_eval": state.initial_eval,
                       "last_eval": state.last_eval, "steps": state.step, "tokens_seen": state.tokens_seen},
                      merge_adapter=False, title=f"SFT {self.cfg.name}",
                      stop_token_ids=self.template.get("stop_token_ids"))


def _check_lengths(cfg: SFTTrainingConfig, inputs: SFTInputs, corpora: Corpora, template, config) -> None:
    """The longest example, and the eval prompts with their new tokens, within the model's positions."""
    where = f"--model_path {inputs.model_path}"
    longest = max(corpora.dirs, key=lambda d: int(d.train.lengths.max()))
    check_positions(config, corpora.longest, where,
                    f"the longest example of {longest.path} (prepared with output_params.sequence_length "
                    f"{longest.manifest['sequence_length']})",
                    "prepare the corpus again with output_params.sequence_length within the limit, or use a model "
                    "with more positions")
    evaluation = cfg.evaluation_config
    if evaluation.eval_prompts:
        system = [{"role": "system", "content": evaluation.system_prompt}] if evaluation.system_prompt else []
        prompt = max(len(template.encode_prompt(system + [{"role": "user", "content": p}]))
                     for p in evaluation.eval_prompts)
        new = evaluation.generation_config.max_new_tokens
        check_positions(config, prompt + new, where, f"the longest eval prompt ({prompt} tokens) plus "
                        f"max_new_tokens ({new})", "lower evaluation_config.generation_config.max_new_tokens or "
                        "shorten the eval prompts")


def _plan(cfg: SFTTrainingConfig, corpora: Corpora, inputs: SFTInputs) -> RunPlan:
    plan = RunPlan()
    plan.add("model", str(inputs.model_path), "--model_path")
    if cfg.quantization is not None:
        plan.add("base weights", describe_base(cfg.quantization, inputs.model_path), "quantization")
    total = sum(corpora.weights)
    for d, w in zip(corpora.dirs, corpora.weights):
        plan.add(f"data {d.path.name}", f"{len(d.train):,} train / {len(d.val):,} val, "
                 f"weight {w / total:.2f}", corpora.weights_from)
    first = corpora.dirs[0].manifest["template"]["name"]
    others = [f"{d.manifest['template']['name']} in {d.path.name}" for d in corpora.dirs
              if d.manifest["template"]["name"] != first]
    plan.add("template", first + (f" (its examples keep their own: {', '.join(others)}; samples and final/ use "
                                   f"{first}, the first dir's)" if others else ""), "data manifest")
    prompts_from = inputs.overrides.get("evaluation_config.eval_prompts", "evaluation_config.eval_prompts")
    plan.add("eval prompts", len(cfg.evaluation_config.eval_prompts), prompts_from)
    return plan


def _record(cfg: SFTTrainingConfig, inputs: SFTInputs, fingerprint: str, corpora: Corpora,
            base_sha256: str) -> SFTRecord:
    """What each checkpoint and final/ record of the run (resume checks the tokenizer and data hashes)."""
    return SFTRecord(config=to_dict(cfg), tokenizer_sha256=fingerprint, data_hashes=corpora.hashes,
                     model_path=str(inputs.model_path), data_dirs=[str(d.path) for d in corpora.dirs],
                     data_weights=corpora.weights, template=corpora.dirs[0].manifest["template"],
                     overrides=inputs.overrides, base_model_sha256=base_sha256)


def _summary(state: TrainState, final: Path) -> str:
    before, after = state.initial_eval.get("eval/loss"), state.last_eval.get("eval/loss")
    lines = [f"trained {state.step} steps, {state.tokens_seen:,} tokens "
             f"({state.supervised_seen:,} supervised)"]
    if before is not None and after is not None:
        lines.append(f"validation loss: {before:.4f} -> {after:.4f} "
                     f"(perplexity {state.initial_eval['eval/ppl']:.2f} -> {state.last_eval['eval/ppl']:.2f})")
    if state.best_step and state.best_step != state.step:
        lines.append(f"final/ holds the best checkpoint: step {state.best_step}, "
                     f"validation loss {state.best_eval_loss:.4f} (load_best_model_at_end)")
    lines.append(f"final: {final}")
    return "\n".join(lines)


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


class _EvalSamples:
    """At each evaluation: responses to the config's eval prompts, appended to samples.jsonl by the main process;
    returns the share of responses that ended with the template's stop token."""

    def __init__(self, cfg: EvaluationConfig, template, tokenizer, path: Path) -> None:
        self.cfg, self.template, self.tokenizer, self.path = cfg, template, tokenizer, path

    def __call__(self, run, step: int) -> dict:
        main = run.accelerator.is_main_process
        if not main and not run.sharded:  # sharded, every rank takes part in each forward
            return {}
        model = unwrap_lm(run.accelerator, run.loss_module)
        system = [{"role": "system", "content": self.cfg.system_prompt}] if self.cfg.system_prompt else []
        conversations = [system + [{"role": "user", "content": p}] for p in self.cfg.eval_prompts]
        with torch.random.fork_rng(devices=[]), gathered(run.loss_module):  # sampling must not move the training RNG
            results = generate_responses(model, self.tokenizer, self.template, conversations,
                                         self.cfg.generation_config)
        if not main:
            return {}
        with open(self.path, "a", encoding="utf-8") as handle:
            for prompt, result in zip(self.cfg.eval_prompts, results):
                handle.write(json.dumps({"step": step, "prompt": prompt, "response": result.text,
                                         "finished": result.finished}, ensure_ascii=False) + "\n")
        return {"samples/finished_rate": sum(r.finished for r in results) / len(results)}
