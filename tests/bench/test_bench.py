"""The throughput benchmark's own machinery: FLOP count, window statistics, data order, report writer."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from train_helpers import random_store, tiny_llama
from utils.bench.metrics import ModelShape, StepRecord, matmul_peak_flops, model_shape, window_stats
from utils.common.labels import IGNORE
from utils.sampling.packing import pack


def test_model_shape_counts_linear_weights_once():
    model = tiny_llama()  # hidden 32, intermediate 64, 2 layers, 4 heads / 2 kv heads, vocab 97, tied head
    shape = model_shape(model)
    per_layer = 32 * 32 + 2 * (32 * 16) + 32 * 32 + 3 * (32 * 64)  # q, k+v (2 kv heads of 8), o, MLP
    assert shape.matmul_params == 2 * per_layer + 97 * 32  # the tied head counts once
    assert shape.trainable_matmul_params == shape.matmul_params
    assert (shape.layers, shape.attention_width) == (2, 32)


def test_step_flops_full_and_frozen():
    full = ModelShape(matmul_params=1000, trainable_matmul_params=1000, layers=2, attention_width=8)
    lengths = np.array([3, 5])
    assert full.step_flops(lengths) == 6 * 1000 * 8 + 12 * 2 * 8 * (9 + 25)
    lora = ModelShape(matmul_params=1000, trainable_matmul_params=10, layers=2, attention_width=8)
    assert lora.step_flops(lengths) == (4 * 1000 + 2 * 10) * 8 + 12 * 2 * 8 * 34


def test_lora_shape_has_few_trainable():
    from utils.parallel.lora import LoraSettings, apply_lora

    model = apply_lora(tiny_llama(), LoraSettings(r=2, lora_alpha=4, lora_dropout=0.0, target_modules=["q_proj"]))
    shape = model_shape(model)
    assert shape.trainable_matmul_params == 2 * (2 * 32 + 32 * 2)  # 2 layers x (A: r x 32 + B: 32 x r)
    assert shape.matmul_params > 10 * shape.trainable_matmul_params


def _records():
    # step k ends at k seconds, except the warm-up step that took 10 s
    return [StepRecord(end_s=10.0 + k, tokens=100, supervised=40, slots=125, flops=1e6, loss=float(5 - k),
                       cpu_s=0.5 * k) for k in range(5)]


def test_window_stats_skip_warmup():
    stats = window_stats(_records(), warmup=1)
    assert stats.steps == 4 and stats.seconds == pytest.approx(4.0)
    assert stats.tokens_per_s == pytest.approx(100.0)
    assert stats.supervised_per_s == pytest.approx(40.0)
    assert stats.padding_fraction == pytest.approx(0.2)
    assert stats.model_flops_per_s == pytest.approx(1e6)
    assert stats.mean_loss == pytest.approx(np.mean([4, 3, 2, 1]))
    assert stats.median_step_s == pytest.approx(1.0)
    assert stats.cpu_seconds == pytest.approx(2.0) and stats.supervised_per_cpu_s == pytest.approx(80.0)


def test_window_stats_needs_steps_after_warmup():
    with pytest.raises(ValueError):
        window_stats(_records(), warmup=5)


def test_matmul_peak_is_positive():
    assert matmul_peak_flops(size=64, seconds=0.05) > 0


def test_the_mfu_peak_is_measured_where_the_runs_train(monkeypatch):
    import torch

    from utils.bench import benchmark

    calls = []
    monkeypatch.setattr(benchmark, "matmul_peak_flops", lambda **kw: calls.append(kw) or 1.0)
    assert benchmark.measure_peaks({"fp32": torch.float32, "bf16": torch.bfloat16}, "cuda") == {"fp32": 1.0, "bf16": 1.0}
    assert [(c["device"], c["size"], c["dtype"]) for c in calls] == [("cuda", 8192, torch.float32),
                                                                      ("cuda", 8192, torch.bfloat16)]
    calls.clear()
    benchmark.measure_peaks({"fp32": torch.float32}, "cpu")
    assert calls == [{"size": 2048, "dtype": torch.float32, "device": "cpu"}]


def test_example_order_is_what_the_planner_draws():
    """TRL and the HF Trainer get the sampler's stream in order: step k must hold the same examples."""
    from utils.sampling.planner import MixtureSampler, StepPlanner

    store = random_store("s", 50, seed=3)
    planner = StepPlanner(MixtureSampler([len(store)], [1.0], 7), [store.lengths], [store.supervised_targets],
                          num_bins=1, examples_per_bin=4)
    stream = MixtureSampler([len(store)], [1.0], 7)
    for _ in range(6):
        batches = planner.next_step()
        expected = [stream.next() for _ in range(4)]
        assert sorted(batches.bins[0]) == sorted(expected)


def test_counting_collator_counts_like_the_packer():
    from utils.bench.runners import CountingCollator

    store = random_store("s", 4, seed=5)
    examples = [store.get(i) for i in range(4)]
    fake = lambda rows: {"input_ids": torch.zeros(len(rows), max(len(r["input_ids"]) for r in rows))}  # noqa: E731
    counting = CountingCollator(fake)
    counting([{"input_ids": ids.tolist(), "labels": labels.tolist()} for ids, labels in examples])
    packed = pack([(ids, labels, 0) for ids, labels in examples])
    tokens, supervised, slots, lengths = counting.batches[0]
    assert (tokens, supervised) == (packed.num_tokens, packed.num_supervised)
    assert lengths == [len(ids) for ids, _ in examples] and slots >= tokens
    # a BFD-packed row carries its examples' lengths: the first label of each is no target either
    row = {"input_ids": np.concatenate([e[0] for e in examples]).tolist(),
           "labels": np.concatenate([e[1] for e in examples]).tolist(), "seq_lengths": lengths}
    counting([row])
    assert counting.batches[1][:2] == (packed.num_tokens, packed.num_supervised)


def test_trl_padding_free_collator_masks_like_the_packer():
    pytest.importorskip("trl")
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    store = random_store("s", 3, seed=9)
    examples = [store.get(i) for i in range(3)]
    batch = DataCollatorForLanguageModeling(pad_token_id=0, padding_free=True)(
        [{"input_ids": ids.tolist(), "labels": labels.tolist()} for ids, labels in examples])
    packed = pack([(ids, labels, 0) for ids, labels in examples])
    shifted = batch["labels"][0, 1:].tolist() + [IGNORE]  # the model shifts labels; our packer pre-shifts
    assert shifted == packed.targets[0].tolist()


def _results():
    runs = []
    for trainer, speed, loss, rss in [("ours", 300.0, 2.00, 900), ("trl", 150.0, 2.01, 1500),
                                      ("trl_packed", 120.0, 2.2, 1400), ("hf", 100.0, 2.01, 2000)]:
        window = {"steps": 4, "seconds": 4.0, "tokens_per_s": 2 * speed, "supervised_per_s": speed,
                  "supervised_per_cpu_s": speed, "cpu_seconds": 4.0,
                  "padding_fraction": 0.3 if trainer == "hf" else 0.0, "model_flops_per_s": speed * 1e6,
                  "mean_loss": loss, "median_step_s": 1.0}
        runs.append({"case": "tiny@512", "trainer": trainer, "window": window, "peak_rss_mb": rss, "notes": [],
                     "micro_examples": 4})
    return {"runs": runs, "matmul_peak_flops": 1e9, "notes": ["SmolLM2 left out"], "command": "bench",
            "settings": {"steps": 8, "warmup": 2, "repeats": 1},
            "prep": {"ours": {"num_proc": 2, "examples": 100, "seconds": 1.0, "examples_per_s": 100.0,
                              "cpu_s": 0.5, "examples_per_cpu_s": 200.0},
                     "trl": {"num_proc": 2, "examples": 100, "seconds": 2.0, "examples_per_s": 50.0,
                             "cpu_s": 2.0, "examples_per_cpu_s": 50.0}, "speedup": 2.0},
            "machine": {"cpu": "test cpu", "cores": 2, "torch_threads": 2, "gpu": None, "python": "3.11",
                        "versions": {"torch": "x"}}}


def test_summary_ratios():
    from utils.bench.report import summarize

    rows = {r["trainer"]: r for r in summarize(_results())}
    assert rows["ours"]["vs_trl"] == pytest.approx(2.0)  # against TRL's faster configuration
    assert rows["ours"]["vs_hf"] == pytest.approx(3.0)
    assert rows["ours"]["mfu"] == pytest.approx(0.3)
    assert rows["ours"]["loss_vs_trl"] == pytest.approx(2.00 / 2.01 - 1)


def test_bf16_runs_compare_with_trl_in_bf16_and_use_the_bf16_peak():
    from utils.bench.report import summarize

    results = _results()
    for run in results["runs"]:
        run["precision"] = "bf16" if run["trainer"] == "ours" else "fp32"
    bf16 = {**results["runs"][1], "trainer": "trl_bf16", "precision": "bf16",
            "window": {**results["runs"][1]["window"], "mean_loss": 2.04, "supervised_per_s": 200.0,
                       "model_flops_per_s": 200e6}}
    results.update(runs=results["runs"] + [bf16], matmul_peaks={"fp32": 1e9, "bf16": 4e9})
    rows = {r["trainer"]: r for r in summarize(results)}
    assert rows["ours"]["loss_vs_trl"] == pytest.approx(2.00 / 2.04 - 1)  # same precision, not fp32 TRL
    assert rows["ours"]["vs_trl"] == pytest.approx(1.5)  # TRL bf16 is TRL's fastest here
    assert rows["ours"]["mfu"] == pytest.approx(300e6 / 4e9)
    assert rows["trl"]["mfu"] == pytest.approx(150e6 / 1e9)


def test_report_keeps_hand_written_text(tmp_path):
    from utils.bench.report import BEGIN, END, write_report

    report = tmp_path / "BENCHMARKS.md"
    report.write_text(f"# Benchmarks\n\nhand-written levers\n\n{BEGIN}\nold numbers\n{END}\n\nmore notes\n")
    write_report(_results(), report)
    text = report.read_text()
    assert "hand-written levers" in text and "more notes" in text and "old numbers" not in text
    assert "| tiny@512 | this trainer | 4 | 300 | 300 |" in text and "2.00x" in text
    assert "SmolLM2 left out" in text and "speed-up: 2.00x (wall clock), 4.00x (per CPU-second)" in text
    assert (tmp_path / "benchmarks.png").stat().st_size > 0
