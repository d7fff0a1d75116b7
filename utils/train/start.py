"""How both training stages begin: the accelerator, the seed and the tokenizer; then the model made ready to train
(architecture checked, LoRA wrapped, packed attention, gradient checkpointing)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from accelerate import Accelerator
from accelerate.utils import set_seed

from utils.data.fingerprint import tokenizer_fingerprint
from utils.data.tokenizer import hf_dir_for, load_tokenizer
from utils.model.architectures import check_model, default_lora_targets
from utils.model.attention import use_packed_attention
from utils.monitor.trackers import make_trackers
from utils.parallel.accelerator import make_accelerator
from utils.parallel.lora import LoraSettings, apply_lora
from utils.train.cli import RunInputs
from utils.train.config import TrainingParams


@dataclass
class RunStart:
    """What a training stage has once it started, before any data or model is read."""

    accelerator: Accelerator
    """With the trackers of report_to (started later, by the loop)."""
    tokenizer: object
    fingerprint: str
    """sha256 of the tokenizer files (utils/data/fingerprint.py): the prepared data must carry the same."""


def start_run(params: TrainingParams, inputs: RunInputs) -> RunStart:
    """The accelerator (with the trackers of report_to), the seed, the tokenizer and its fingerprint."""
    output_dir = Path(inputs.output_dir)
    trackers = make_trackers(params.report_to, output_dir, output_dir.name)
    accelerator = make_accelerator(params.mixed_precision(), trackers)
    set_seed(params.seed)
    tokenizer = load_tokenizer(inputs.tokenizer_path)
    return RunStart(accelerator, tokenizer, tokenizer_fingerprint(hf_dir_for(inputs.tokenizer_path)))


def ready_to_train(model, lora: LoraSettings | None, params: TrainingParams, where: str):
    """Refuse an unsupported architecture; wrap LoRA, targeting every attention and MLP layer of the
    architecture when ``lora.target_modules`` is left out; switch on packed attention and, when asked, gradient
    checkpointing. Returns the model and the LoRA settings as applied (targets filled in), which the run
    records, so a resume compares the layers actually adapted."""
    check_model(model, where)
    if lora is not None:
        if lora.target_modules is None:
            lora = replace(lora, target_modules=default_lora_targets(model))
        model = apply_lora(model, lora)
    use_packed_attention(model, fp32=bool(params.attention_fp32 and params.bf16))
    if params.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if hasattr(model, "enable_input_require_grads"):
            model.enable_input_require_grads()
    return model, lora
