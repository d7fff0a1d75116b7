"""What a checkpoint of a sharded (FSDP2) run costs each rank: seconds, and the rise of its resident memory above
what it held just before the write, for the two layouts the trainer knows: ``gathered`` (the whole weights and
AdamW state collected on rank 0, which writes them: unsharded runs, and sharded runs before DCP) and ``sharded``
(DCP: each rank writes its own shards).

One worker per rank, under torchrun (gloo on the CPU)::

    torchrun --nproc_per_node 2 -m utils.bench.checkpoint_memory --layout sharded --out DIR

builds a Llama-shaped model of random weights, shards it with the trainer's own ``shard``, takes one AdamW step
(so the optimizer holds its moments), then times ``save_checkpoint`` while a thread samples the process's
resident set every 2 ms. Each rank writes ``DIR/result_<rank>.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import threading
import time
from pathlib import Path

import torch

from utils.checkpoint.record import TrainingState

PAGE = os.sysconf("SC_PAGE_SIZE")


_STATE = TrainingState(step=1, tokens_seen=0, supervised_seen=0, loss_history=[], planner={})
"""The training state the bench's checkpoint carries (the bench times the weights and optimizer state)."""


def resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * PAGE


class PeakSampler:
    """The highest resident set seen while the block runs (sampled every ``every`` seconds)."""

    def __init__(self, every: float = 0.002) -> None:
        self.every, self.peak, self._done = every, 0, threading.Event()

    def _run(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, resident_bytes())
            time.sleep(self.every)

    def __enter__(self) -> "PeakSampler":
        self.peak = resident_bytes()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())


class _Head(torch.nn.Module):
    """The trainer's wrapper shape: the causal LM as ``.model`` (what ``unwrap_lm`` reaches for)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=ids).logits.float().square().mean()


def build(hidden: int, layers: int, vocab: int) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=hidden * 8 // 3,
                         num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                         num_key_value_heads=max(1, hidden // 64), tie_word_embeddings=False)
    torch.manual_seed(0)
    return _Head(LlamaForCausalLM(config))


def worker(layout: str, out: Path, hidden: int, layers: int, vocab: int) -> dict:
    from accelerate import Accelerator

    import utils.checkpoint.checkpoints as checkpoints
    from utils.parallel.fsdp import shard

    accelerator = Accelerator(cpu=True)
    model = shard(build(hidden, layers, vocab), torch.device("cpu"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    model(torch.randint(0, vocab, (1, 32))).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    if layout == "gathered":
        checkpoints.is_sharded = lambda module: False  # the layout every sharded run wrote before DCP
    numel = sum(p.numel() for p in model.parameters())
    accelerator.wait_for_everyone()
    before = resident_bytes()
    start = time.perf_counter()
    with PeakSampler() as sampler:
        checkpoints.save_checkpoint(accelerator, out, 1, model, optimizer, scheduler, _STATE, None)
    seconds = time.perf_counter() - start
    files = sorted(p for p in (out / "checkpoint-1").rglob("*") if p.is_file())
    return {"layout": layout, "rank": accelerator.process_index, "world": accelerator.num_processes,
            "parameters": numel, "state_mib": numel * 12 / 2**20, "seconds": seconds,
            "rss_before_mib": before / 2**20, "peak_rise_mib": (sampler.peak - before) / 2**20,
            "largest_file_mib": max(p.stat().st_size for p in files) / 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layout", choices=("gathered", "sharded"), required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--hidden", type=int, default=768)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--vocab", type=int, default=32000)
    args = parser.parse_args()
    result = worker(args.layout, args.out, args.hidden, args.layers, args.vocab)
    (args.out / f"result_{result['rank']}.json").write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
