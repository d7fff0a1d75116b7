"""Small synthetic training runs for loop tests: a 2-layer Llama and random token stores."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from utils.common.labels import IGNORE
from utils.sampling.example_store import ExampleStore

VOCAB = 97


def tiny_llama(seed: int = 0, layers: int = 2):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                         tie_word_embeddings=True, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def random_store(name: str, count: int, seed: int, min_len: int = 6, max_len: int = 40,
                 learnable: bool = False) -> ExampleStore:
    """Examples whose first half (the 'prompt') is unsupervised; ``learnable`` ones count up by 1."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(min_len, max_len, count)
    tokens = rng.integers(3, VOCAB, int(lengths.sum())).astype(np.int32)
    if learnable:
        tokens = (3 + (np.arange(len(tokens)) + rng.integers(0, VOCAB)) % (VOCAB - 3)).astype(np.int32)
    labels = tokens.copy()
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    for lo, hi in zip(offsets[:-1], offsets[1:]):
        labels[lo: lo + (hi - lo) // 2] = IGNORE
    return ExampleStore(name, tokens, labels, offsets)


def run_training(out_dir: Path, *, batch: int | None = None, tokens: int | None = None, accum: int = 1,
                 steps: int = 4, save_steps: int = 0, resume: Path | None = None, lora: bool = False,
                 seed: int = 0, weights=(0.7, 0.3), learnable: bool = False, lr: float = 1e-2,
                 **overrides):
    """Train the tiny model on two weighted sources with the stages' recipe; returns (state, model state_dict)."""
    from utils.train.recipe import train

    trained = train(synthetic_stage(out_dir, batch=batch, tokens=tokens, accum=accum, steps=steps,
                                    save_steps=save_steps, resume=resume, lora=lora, seed=seed, weights=weights,
                                    learnable=learnable, lr=lr, **overrides))
    lm = trained.run.accelerator.unwrap_model(trained.run.loss_module).model
    return trained.state, {k: v.detach().clone() for k, v in lm.state_dict().items()}


def synthetic_stage(out_dir: Path, *, batch: int | None = None, tokens: int | None = None, accum: int = 1,
                    steps: int = 4, save_steps: int = 0, resume: Path | None = None, lora: bool = False,
                    seed: int = 0, weights=(0.7, 0.3), learnable: bool = False, lr: float = 1e-2, **overrides):
    """The recipe's ``Stage`` of a synthetic run: the tiny model (LoRA when ``lora``) on two weighted random
    sources, no tokenizer, nothing claimed or written but checkpoints."""
    from accelerate.utils import set_seed

    from utils.checkpoint.record import RunRecord
    from utils.parallel.accelerator import make_accelerator, run_device
    from utils.parallel.lora import LoraSettings
    from utils.monitor.trackers import make_trackers
    from utils.train.cli import RunInputs
    from utils.train.config import TrainingParams
    from utils.train.recipe import Stage
    from utils.train.run import TrainData
    from utils.train.start import RunStart, ready_to_train, resolve_auto

    settings = dict(learning_rate=lr, max_steps=steps, per_device_train_batch_size=batch,
                    micro_batch_tokens=tokens, gradient_accumulation_steps=accum, warmup_steps=1,
                    save_steps=save_steps, logging_steps=1, eval_steps=0, save_total_limit=None,
                    seed=seed, bf16=False, max_grad_norm=1.0)
    params = TrainingParams(**{**settings, **overrides})
    adapter = LoraSettings(r=4, lora_alpha=8, lora_dropout=0.1, target_modules=["q_proj", "v_proj", "gate_proj"])

    class Synthetic(Stage):
        def start(self) -> RunStart:
            params, auto = resolve_auto(self.params, run_device())
            self.params = params
            set_seed(seed)
            trackers = make_trackers(params.report_to, out_dir, "test")
            return RunStart(make_accelerator(params.mixed_precision(), trackers), None, "", params=params,
                            resolved_auto=auto)

        def data(self, start, checkpoint, held) -> TrainData:
            stores = [random_store("a", 60, 1, learnable=learnable), random_store("b", 30, 2, learnable=learnable)]
            return TrainData(stores, list(weights), [random_store("a", 6, 3), random_store("b", 6, 4)], 40)

        def model(self, start):
            model, _ = ready_to_train(tiny_llama(seed), adapter if lora else None, self.params, "tiny llama")
            return model, RunRecord(data_hashes="synthetic", tokenizer_sha256="none")

    return Synthetic(params, RunInputs(tokenizer_path="", output_dir=out_dir,
                                       resume_from_checkpoint=str(resume) if resume else None))


def count_stand_in_calls(monkeypatch) -> dict:
    """Count the CPU stand-in kernel's calls (``calls["n"]``) for the rest of a test."""
    import utils.model.kernels as kernels

    calls = {"n": 0}
    real = kernels._attend

    def counted(*args, **kwargs):
        calls["n"] += 1
        return real(*args, **kwargs)

    monkeypatch.setattr(kernels, "_attend", counted)
    return calls


def emulate_cuda_kernels(monkeypatch, kind: str | None = "1") -> None:
    """Switch the CUDA-path emulation to ``kind`` (None: off) and forget the kernel chosen before."""
    import utils.model.kernels as kernels

    if kind is None:
        monkeypatch.delenv(kernels.EMULATE_ENV, raising=False)
    else:
        monkeypatch.setenv(kernels.EMULATE_ENV, kind)
    kernels.cuda_kernel.cache_clear()
