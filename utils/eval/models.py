"""Loading a trained model to measure or talk to: a LoRA adapter directory (its base + the adapter) or a full
model, checked against the tokenizer it is used with and the positions it must take. The evaluation stage
(``utils/eval/stage.py``) and the studio's Chat tab (``utils/studio/chat.py``) load models through this module.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from utils.common.config import from_dict, read_json, read_json_dict
from utils.common.errors import UserError
from utils.data.fingerprint import TOKENIZER_FILES, tokenizer_fingerprint
from utils.model.architectures import check_model, check_positions
from utils.model.attention import use_packed_attention
from utils.model.modeling import check_vocab_fits, load_model
from utils.parallel.quantization import load_base
from utils.train.config import QuantizationParams

SUMMARY = "training_summary.json"


def read_summary(model_dir: str | Path | None) -> dict:
    """A training stage's ``training_summary.json`` beside the weights, or {} when there is none."""
    path = Path(model_dir or "") / SUMMARY
    if not model_dir or not path.is_file():
        return {}
    return read_json_dict(path)


def has_tokenizer(path: Path) -> bool:
    return path.is_dir() and any((path / name).is_file() for name in TOKENIZER_FILES)


def check_model_tokenizer(model_dir: str | Path, fingerprint: str, tokenizer_path: str) -> None:
    """A model directory that carries tokenizer files must carry the evaluation tokenizer."""
    path = Path(model_dir)
    if read_summary(path).get("tokenizer_sha256") == fingerprint:
        return  # trained with this tokenizer; its chat template may be the trained one (utils/data/chat_jinja.py)
    if has_tokenizer(path) and tokenizer_fingerprint(path) != fingerprint:
        raise UserError(f"{path}: its tokenizer differs from the evaluation tokenizer {tokenizer_path} "
                        f"(sha256 {tokenizer_fingerprint(path)[:12]} vs {fingerprint[:12]}); compare only "
                        "models that share the tokenizer the data was prepared with")


def load_eval_model(path: str, tokenizer, fingerprint: str, tokenizer_path: str, device: str,
                    trust_remote_code: bool = False, positions: list[tuple[str, int, str]] = ()):
    """A LoRA adapter directory (its own base + the adapter, merged) or a full model, in eval mode; ``positions``
    longer than the model takes are refused in one line before any evaluation."""
    check_model_tokenizer(path, fingerprint, tokenizer_path)
    if (Path(path) / "adapter_config.json").is_file():
        model = _load_adapter(Path(path), trust_remote_code)
    else:
        model = load_model(str(path), trust_remote_code=trust_remote_code)
    check_vocab_fits(model, tokenizer, str(path), tokenizer_path)
    check_model(model, str(path))
    check_lengths(model.config, str(path), positions)
    use_packed_attention(model)
    return model.to(device).eval()


def check_lengths(config, where: str, positions: list[tuple[str, int, str]]) -> None:
    for what, needed, fix in positions:
        check_positions(config, needed, where, what, fix)


def _load_adapter(path: Path, trust_remote_code: bool):
    config_file = path / "adapter_config.json"
    base = read_json(config_file).get("base_model_name_or_path")
    trained_on = read_summary(path).get("model_path")
    if trained_on and Path(trained_on).exists() and not Path(str(base)).exists():
        base = trained_on  # final/ names its base by Hub id; the copy training read is here
    if not base or (base.startswith(("/", ".", "checkpoints")) and not Path(base).exists()):
        raise UserError(f"{config_file}: base_model_name_or_path {base!r} not found; run from the directory "
                        "training ran in, or set that field to the base model's directory")
    quant = _quantization(path)
    model = load_base(base, dataclasses.asdict(quant) if quant else None, trust_remote_code)
    from peft import PeftModel

    try:
        adapted = PeftModel.from_pretrained(model, str(path))
    except (OSError, ValueError, RuntimeError) as err:
        raise UserError(f"{path}: cannot load the LoRA adapter onto {base}: {str(err).splitlines()[0]}") from None
    if quant is not None:
        print(f"base {base} held in {quant.describe()} as in training (quantization in {SUMMARY}); "
              "the adapter stays unmerged", flush=True)
        # QLoRA: the 4-bit base as training held it, adapter beside it. Merging would round base + adapter to
        # 4 bits again; the export merges into the dequantized base instead (the same weights, in full precision).
        return adapted
    # merged once, so every forward runs at plain-model speed; equal to base + adapter up to fp32 rounding
    return adapted.merge_and_unload()


def _quantization(path: Path) -> QuantizationParams | None:
    """The quantization block training ran with (training_summary.json beside the adapter), or None."""
    saved = read_summary(path).get("config", {}).get("quantization")
    return from_dict(QuantizationParams, saved, "quantization.") if isinstance(saved, dict) else None
