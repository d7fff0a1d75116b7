"""One rank of a tiny training run on the emulated CUDA path, its host-device syncs counted; prints one JSON line
per rank. Run by tests/train/test_host_syncs.py under torchrun (or alone, as one process)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[2])]

import train_helpers  # noqa: E402
import utils.train.loop as loop  # noqa: E402
from utils.bench.syncs import counting_fit_syncs  # noqa: E402
from utils.parallel.accelerator import exit_process  # noqa: E402


def main(out: Path, lora: bool) -> None:
    found = {}
    real_fit = loop.fit

    def counted_fit(run, state):
        with counting_fit_syncs(loop, run) as result:
            state = real_fit(run, state)
        found.update(rank=run.accelerator.process_index, world=run.accelerator.num_processes,
                     per_micro_batch=result.per_micro_batch(), steady_steps=len(result.steady),
                     micro_batches=result.micro_batches, describe=result.describe())
        return state

    loop.fit = counted_fit
    train_helpers.run_training(out, tokens=128, accum=2, steps=7, lora=lora, logging_steps=3, eval_steps=5,
                               bf16=True)
    print("SYNCS " + json.dumps(found), flush=True)


if __name__ == "__main__":
    main(Path(sys.argv[1]), lora="--lora" in sys.argv)
    exit_process(0)  # as the training scripts end (gloo's teardown aborts finished ranks now and then)
