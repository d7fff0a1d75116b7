"""Models: Llama-style presets built from a config, loading HF checkpoints and weights.

Nothing here downloads: a preset is built from its config, and ``load_model`` reads a
local directory (or a hub name, for users with internet) with ``trust_remote_code``
off unless asked for.
"""
from __future__ import annotations

import contextlib
import hashlib
import json

import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from utils.common.config_schema import setting
from utils.common.errors import UserError, check_readable
from utils.common.locks import recover_published
from utils.model.gguf import hf_dir_for_gguf

# peft reads a property transformers 5 deprecated; the warning says nothing a user can act on.
warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)


@dataclass(frozen=True)
class ModelArchitecture:
    """A Llama-style decoder; the vocabulary size is taken from the tokenizer."""

    hidden_size: int = setting(256, minimum=8)
    """Width of the residual stream."""
    num_hidden_layers: int = setting(4, minimum=1)
    """Decoder layers."""
    num_attention_heads: int = setting(4, minimum=1)
    """Query heads; must divide hidden_size."""
    num_key_value_heads: int = setting(4, minimum=1)
    """Key/value heads (grouped-query attention); must divide num_attention_heads."""
    intermediate_size: int = setting(704, minimum=8)
    """Width of the SwiGLU MLP."""
    max_position_embeddings: int = setting(2048, minimum=16)
    """Longest sequence the RoPE cache is sized for."""
    rope_theta: float = setting(10000.0, exclusiveMinimum=0)
    """RoPE base frequency."""
    rms_norm_eps: float = setting(1e-5, exclusiveMinimum=0)
    """RMSNorm epsilon."""
    tie_word_embeddings: bool = True
    """Share the input embedding and the output head."""
    initializer_range: float = setting(0.02, exclusiveMinimum=0)
    """Std of the normal initialisation."""

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise ValueError("num_attention_heads must divide hidden_size")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError("num_key_value_heads must divide num_attention_heads")


def build_model(arch: ModelArchitecture, tokenizer, seed: int) -> torch.nn.Module:
    """A freshly initialised Llama model sized to the tokenizer (deterministic from ``seed``)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
        head_dim=arch.hidden_size // arch.num_attention_heads, **asdict(arch),
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def model_dir(path: str) -> str:
    """The local directory (absolute) or hub name that ``path`` loads from; a .gguf file is converted once."""
    local = Path(path)
    check_readable(local, "model")
    recover_published(local)  # a stage killed while publishing leaves the previous version beside it
    if local.suffix == ".gguf":
        local = hf_dir_for_gguf(local)
    elif local.is_file():
        raise UserError(not_a_model_dir(path))
    elif not local.exists() and (local.is_absolute() or path.startswith((".", "checkpoints", "data"))):
        raise UserError(f"{path}: model not found; train one first (e.g. `make pretrain-tiny`) "
                        "or pass an HF model directory")
    check_model_files(local, path)
    # adapters record this path: absolute, so they load from any directory
    return str(local.resolve()) if local.exists() else path


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")


def check_model_files(local: Path, path, weights: bool = False) -> None:
    """Refuse a local directory without a model's config.json (nor a LoRA adapter's adapter_config.json) and, with
    ``weights``, a config without weights, naming what is missing and what to pass."""
    if not local.is_dir() or (local / "adapter_config.json").is_file():
        return
    fix = "pass --model_path the directory that holds config.json and the weights (e.g. the final/ of a run) or a .gguf"
    if not (local / "config.json").is_file():
        what = "is empty" if not any(local.iterdir()) else "holds no config.json"
        raise UserError(f"{path}: {what}, so it is not a model directory; {fix}")
    if weights and not any((local / name).is_file() for name in WEIGHT_FILES) \
            and not any(local.glob("*.safetensors")):
        raise UserError(f"{path}: has config.json but no weights (model.safetensors or pytorch_model.bin); "
                        "copy the weights in beside it, or " + fix)


def not_a_model_dir(path) -> str:
    return (f"{path}: is a file, not a model directory or a .gguf file; pass the directory that holds config.json "
            "and the weights (e.g. the final/ of a run)")


def load_model(path: str, trust_remote_code: bool = False, dtype: torch.dtype = torch.float32,
               quantization_config=None):
    """An HF causal LM from a local directory (or hub name); errors name the path and the fix.

    ``quantization_config`` (a transformers ``BitsAndBytesConfig``) loads the linear layers quantized.
    """
    from transformers import AutoModelForCausalLM

    local = model_dir(path)
    check_model_files(Path(local), path, weights=True)
    extra = {"quantization_config": quantization_config} if quantization_config is not None else {}
    try:
        return AutoModelForCausalLM.from_pretrained(local, dtype=dtype, trust_remote_code=trust_remote_code,
                                                    **extra)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot load model: {str(err).splitlines()[0]}") from None
    except Exception as err:  # safetensors' SafetensorError: a truncated or damaged weights file
        if type(err).__name__ != "SafetensorError":
            raise
        raise UserError(f"{_damaged_weights(Path(local))}: truncated or damaged weights ({str(err).splitlines()[0]}); "
                        "copy or download the model again") from None


def empty_model(path: str, trust_remote_code: bool = False):
    """The model's module tree without weights (on the meta device): its layer types, at no loading cost."""
    from accelerate import init_empty_weights
    from transformers import AutoConfig, AutoModelForCausalLM

    try:
        config = AutoConfig.from_pretrained(model_dir(path), trust_remote_code=trust_remote_code)
        with init_empty_weights():
            return AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot load model: {str(err).splitlines()[0]}") from None


def _damaged_weights(local: Path) -> Path:
    """The first ``*.safetensors`` file of ``local`` whose header safetensors cannot read (else ``local``)."""
    from safetensors import safe_open

    for file in sorted(local.glob("*.safetensors")) if local.is_dir() else []:
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except Exception:  # SafetensorError and whatever a damaged header raises
            return file
    return local


def check_vocab_fits(model, tokenizer, model_path: str, tokenizer_path: str) -> None:
    """The embedding must hold every tokenizer id, or training reads out of bounds."""
    rows = model.get_input_embeddings().weight.shape[0]
    if rows < len(tokenizer):
        raise UserError(
            f"{model_path}: the model's embedding has {rows} rows but the tokenizer {tokenizer_path} "
            f"has {len(tokenizer)} tokens; use the tokenizer the model was trained with")


def count_parameters(model) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return trainable, total


def decoder_and_head(model):
    """The transformer body and the output head under any peft wrapping, whatever the architecture calls them
    (``model``/``lm_head`` in Llama, ``transformer`` in GPT-2, ``gpt_neox``/``embed_out`` in GPT-NeoX)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings()


def load_weights_into(model, path: Path) -> None:
    """Load checkpoint weights (adapter or full, safetensors only) into ``model`` in place; a model sharded by
    FSDP2 takes the full tensors as replicated and keeps its shard of each."""
    with _replicated_inputs(model):
        _load_weights(model, path)


def _replicated_inputs(model):
    """Plain tensors loaded into sharded (DTensor) parameters count as replicated on every rank."""
    from torch.distributed.tensor import DTensor
    from torch.distributed.tensor.experimental import implicit_replication

    sharded = any(isinstance(p, DTensor) for p in model.parameters())
    return implicit_replication() if sharded else contextlib.nullcontext()


def _load_weights(model, path: Path) -> None:
    from safetensors.torch import load_file

    path = Path(path)
    if hasattr(model, "peft_config"):
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, load_file(str(path / "adapter_model.safetensors")))
        unexpected = getattr(result, "unexpected_keys", [])
        if unexpected:
            raise UserError(f"{path}: adapter does not match the model (unexpected {unexpected[:3]})")
        return
    files = sorted(path.glob("model*.safetensors"))
    if not files:
        raise UserError(f"{path}: no model*.safetensors weights in this checkpoint")
    state = {}
    for file in files:
        state.update(load_file(str(file)))
    missing, unexpected = model.load_state_dict(state, strict=False)
    head = model.get_output_embeddings()
    tied = {f"{name}.weight" for name, module in model.named_modules()
            if module is head} if getattr(model.config, "tie_word_embeddings", False) else set()
    if set(missing) - tied or unexpected:
        raise UserError(f"{path}: weights do not match the model (missing {sorted(set(missing) - tied)[:3]}, "
                        f"unexpected {unexpected[:3]})")
    if tied:
        model.tie_weights()


def weights_fingerprint(model) -> str:
    """sha256 over every weight's name, shape, dtype and an evenly strided sample of its values (at most 65,536 a
    tensor): two different bases of the same shape differ, at a fraction of a second whatever the model's size."""
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().reshape(-1)
        sample = flat[:: max(1, flat.numel() // 65536)].contiguous().cpu()
        digest.update(f"{name}|{tuple(tensor.shape)}|{tensor.dtype}|".encode())
        digest.update(sample.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_config(path: str | Path, trust_remote_code: bool = False):
    """The transformers config of a model directory, a .gguf, or (for a LoRA adapter directory) of its base,
    read without loading weights: what checks before minutes of work need."""
    from transformers import AutoConfig

    source = Path(path)
    if (source / "adapter_config.json").is_file():
        try:
            base = json.loads((source / "adapter_config.json").read_text(encoding="utf-8"))["base_model_name_or_path"]
        except (OSError, ValueError, KeyError, TypeError):
            base = None
        if not base or (base.startswith(("/", ".", "checkpoints")) and not Path(base).exists()):
            raise UserError(f"{source / 'adapter_config.json'}: base_model_name_or_path {base!r} not found; run from "
                            "the directory training ran in, or set that field to the base model's directory")
        source = Path(base)
    if source.suffix == ".gguf":
        source = hf_dir_for_gguf(source)
    try:
        return AutoConfig.from_pretrained(str(source), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: cannot read the model's config.json ({str(err).splitlines()[0][:200]})") from None
