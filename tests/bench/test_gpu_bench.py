"""scripts/benchmark_gpu.py, the parts that run without a GPU: flags, refusal, report, the reference path."""
from __future__ import annotations

import json
import math
import shutil
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from paths import ROOT
from scripts_loader import load_script
from utils.bench import gpu, gpu_demo, gpu_runner
from utils.bench.gpu_model import alone, compare_with_alone
from utils.bench.gpu_runner import Budget, Check, OutOfTime, report
from utils.bench.scaling import write_section
from utils.common.errors import run_cli
from utils.model.attention import packed_sdpa_attention

BOUNDS = [0, 5, 6, 19, 40]


def trainer_packed(query, key, value, bounds):
    """This trainer's CPU packed attention, on the [N, H, D] layout of the check."""
    out, _ = packed_sdpa_attention(SimpleNamespace(training=False), *(t.transpose(0, 1)[None] for t in
                                                                      (query, key, value)),
                                   None, cu_seq_lens_q=torch.tensor(bounds))
    return out[0]


def whole_row(query, key, value, bounds):
    """Wrong on purpose: causal attention across example boundaries."""
    q, k, v = (t.transpose(0, 1) for t in (query, key, value))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).transpose(0, 1)


def test_the_reference_matches_packed_attention_and_catches_leaks_across_examples():
    same = compare_with_alone(trainer_packed, BOUNDS, heads=4, kv_heads=2, dim=8)
    assert same["max_abs_out"] < 1e-5 and same["max_abs_grad"] < 1e-5
    leak = compare_with_alone(whole_row, BOUNDS, heads=4, kv_heads=2, dim=8)
    assert leak["max_abs_out"] > 1e-2


def test_alone_runs_each_example_by_itself():
    q = torch.randn(6, 2, 4)
    out = alone(q, q, q, [0, 2, 6])
    first = F.scaled_dot_product_attention(*(q[:2].transpose(0, 1),) * 3, is_causal=True).transpose(0, 1)
    assert torch.allclose(out[:2], first) and out.shape == q.shape


def test_without_a_gpu_it_refuses_in_one_line_and_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    report_path = tmp_path / "B.md"
    report_path.write_text("# Benchmarks\n")
    code = run_cli(load_script("benchmark_gpu").main, ["--report", str(report_path), "--work_dir", str(tmp_path / "w")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "no CUDA GPU" in err[0]
    assert report_path.read_text() == "# Benchmarks\n" and not (tmp_path / "w").exists()


@pytest.mark.parametrize("argv, message", [(["--steps", "2"], "--steps 2: must be an integer at least 5"),
                                           (["--steps", "x"], "--steps"),
                                           (["--time_limit", "10"], "--time_limit 10: must be an integer at least 30")])
def test_bad_flags_are_one_line(argv, message, capsys):
    assert run_cli(load_script("benchmark_gpu").main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_flags_default_to_every_check():
    args = load_script("benchmark_gpu").parse_args([])
    assert args.checks == ["varlen", "peak", "throughput", "resume", "fsdp2", "demo"] and args.steps == 12
    assert args.time_limit == 360 and args.out is None
    assert tuple(args.checks) == gpu.CHECKS
    assert load_script("benchmark_gpu").parse_args(["--checks", "peak", "varlen"]).checks == ["peak", "varlen"]


def test_the_report_lists_every_check_and_keeps_the_rest_of_the_doc(tmp_path):
    checks = [Check("varlen", True, "out diff 1.0e-03"), Check("fsdp2", False, "error: boom")]
    text = report(checks, "NVIDIA H200", "python scripts/benchmark_gpu.py", "2026-12-03")
    assert "| varlen | yes | out diff 1.0e-03 |" in text and "| fsdp2 | **no** | error: boom |" in text
    assert "NVIDIA H200" in text and "2026-12-03" in text
    doc = tmp_path / "B.md"
    doc.write_text("# B\n\n<!-- scaling:begin (x) -->\nscaling table\n<!-- scaling:end -->\n")
    for _ in range(2):
        write_section(doc, text, begin="<!-- gpu:begin", end="<!-- gpu:end -->", writer="scripts/benchmark_gpu.py")
    written = doc.read_text()
    assert "scaling table" in written and written.count("### GPU checks") == 1


def test_the_budget_gives_each_command_what_is_left_and_stops_at_the_limit(tmp_path):
    budget = Budget(100)
    assert budget.cap(30) == 30 and 95 <= budget.cap(1000) <= 100
    spent = Budget(4)
    with pytest.raises(OutOfTime):
        spent.cap(30)
    checks = gpu_runner.run_checks(["throughput", "resume", "demo"], gpu.full_checks(tmp_path, 5, spent), spent)
    assert not any(tmp_path.iterdir())  # nothing was started
    assert [(c.name, c.passed, c.summary) for c in checks] == [
        (name, False, "not run: the bench's time limit was spent") for name in ("throughput", "resume", "demo")]


def test_a_command_past_its_time_or_failing_is_one_line_naming_it(tmp_path):
    with pytest.raises(gpu_runner.UserError) as err:
        gpu_runner.run_logged([sys.executable, "-c", "print('step 3 of 9', flush=True); import time; time.sleep(30)",
                        "x.py"], tmp_path / "a.log", timeout=1)
    assert str(err.value).startswith("x.py ran past 1s (last line: step 3 of 9)") and "\n" not in str(err.value)
    with pytest.raises(gpu_runner.UserError) as err:
        gpu_runner.run_logged(["make", "-C", str(tmp_path), "sft-pipeline-complete"], tmp_path / "b.log", timeout=30)
    assert str(err.value).startswith("make sft-pipeline-complete failed (exit 2)")


def _run(trainer: str, per_s: float, flops: float, gpu_mb: float, loss: float) -> dict:
    """One run of results.json as benchmark_throughput writes it, on a GPU (bf16)."""
    return {"case": "base@1024", "trainer": trainer, "precision": "bf16", "peak_gpu_mb": gpu_mb, "peak_rss_mb": 900.0,
            "window": {"supervised_per_s": per_s, "supervised_per_cpu_s": per_s, "tokens_per_s": per_s,
                       "padding_fraction": 0.0, "model_flops_per_s": flops, "mean_loss": loss}}


RESULTS = {"matmul_peak_flops": 4e12, "matmul_peaks": {"bf16": 800e12, "fp32": 60e12}, "runs": [
    _run("ours", 300_000.0, 400e12, 9000.0, 2.02), _run("trl_bf16", 150_000.0, 200e12, 12000.0, 2.0)]}


def test_throughput_figures_use_the_gpu_peak_and_compare_like_for_like():
    figures = gpu.throughput_figures(RESULTS)
    assert figures["base@1024"]["ours"]["mfu"] == 0.5 and figures["base@1024"]["trl_bf16"]["mfu"] == 0.25
    line = gpu.throughput_line("base@1024", figures["base@1024"])
    assert line == ("base@1024 bf16: 2.00x TRL padding-free (300,000 vs 150,000 supervised tok/s), MFU 50.0% "
                    "(TRL 25.0%), peak GPU 9,000 MiB (TRL 12,000), loss +1.0% vs TRL")
    assert gpu.throughput_line("x", {"ours": figures["base@1024"]["ours"]}) == "x: a run is missing"


def test_the_throughput_run_is_gpu_sized_and_names_smollm2_only_when_at_hand(tmp_path):
    command = gpu.throughput_command(tmp_path, 12, smollm2=False)
    flags = dict(zip(command[2::2], command[3::2]))
    assert command[1] == "scripts/benchmark_throughput.py" and "smollm2_full" not in command
    assert flags["--examples_per_step"] == "256" and flags["--baseline_micro"] == "64" and flags["--steps"] == "12"
    assert command[command.index("--trainers") + 1:command.index("--trainers") + 3] == ["ours", "trl_bf16"]
    assert "smollm2_full" in gpu.throughput_command(tmp_path, 12, smollm2=True)
    args = load_script("benchmark_throughput").parse_args(command[2:])
    assert args.sizes == ["base"] and args.examples_per_step == 256 and args.no_prep
    assert load_script("benchmark_throughput").parse_args(["--sizes", "smollm2_full"]).sizes == ["smollm2_full"]


REPORT = {"tuned": {"exact_match": 0.8, "format_compliance": 0.99, "retention_ppl": 150.0,
                    "per_family": {"copy": {"exact_match": 0.5}, "sort": {"exact_match": 0.95}}},
          "base": {"exact_match": 0.0, "retention_ppl": 100.0}}


def test_the_demo_is_scored_against_each_gpu_target():
    scores = gpu_demo.demo_scores(REPORT)
    assert scores["family_min"] == 0.5 and scores["retention"] == 1.5 and scores["exact_match"] == 0.8
    assert gpu_demo.missed_targets(299, scores) == []
    low = dict(REPORT, tuned=dict(REPORT["tuned"], exact_match=0.22, retention_ppl=194.0,
                                  per_family={"copy": {"exact_match": 0.0}}))
    assert gpu_demo.missed_targets(310, gpu_demo.demo_scores(low)) == [
        "time 310 s > 300 s", "exact match 22.0% < 75%", "weakest family 0.0% < 40%", "retention 1.94x > 1.5x"]
    missing = gpu_demo.demo_scores({"tuned": {"exact_match": 0.9, "format_compliance": 1.0}})
    assert math.isnan(missing["retention"]) and "retention nanx > 1.5x" in gpu_demo.missed_targets(10, missing)


def test_the_demo_runs_in_a_clean_copy_of_the_sources_with_this_python(tmp_path):
    project = gpu_demo.demo_project(tmp_path)
    assert sorted(p.name for p in project.iterdir()) == sorted(
        [".installed", "Makefile", "checkpoints", "config", "data", "scripts", "utils",
         *(p.name for p in ROOT.glob("requirements*.txt"))])
    assert not list(project.rglob("__pycache__")) and not any((project / "data").iterdir())
    script = Path("scripts") / "03_sft_industrial.py"
    assert (project / script).read_bytes() == (ROOT / script).read_bytes()
    command = gpu_demo.demo_command(project, {"TRAIN_ARGS": "--max_steps 2"})
    assert command[:5] == ["make", "--no-print-directory", "-C", str(project), "sft-pipeline-complete"]
    assert f"PY={sys.executable}" in command and f"STAMP={project / '.installed'}" in command
    assert command[-1] == "TRAIN_ARGS=--max_steps 2"


def test_out_holds_at_most_eight_small_files_with_the_report_figures_logs_and_table(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "demo.log").write_text("\n".join(f"line {i}" for i in range(100)) + "\n")
    (work / "throughput.log").write_text("ok\n")
    checks = [Check("peak", True, "bf16 800 TFLOP/s", {"bf16_flops": 8e14}),
              Check("demo", False, "missed: time", {"seconds": 400.0, "table": "| metric | a |\n|---|---|\n"})]
    text = report(checks, "GPU", "python scripts/benchmark_gpu.py", "2026-12-04")
    written = gpu_runner.write_out(tmp_path / "out", checks, text, work)
    assert sorted(p.name for p in written) == ["demo_summary.md", "gpu_checks.json", "gpu_checks.md", "gpu_logs.txt"]
    assert len(list((tmp_path / "out").iterdir())) <= gpu_runner.MAX_OUT_FILES
    assert json.loads((tmp_path / "out" / "gpu_checks.json").read_text())[1]["figures"]["seconds"] == 400.0
    logs = (tmp_path / "out" / "gpu_logs.txt").read_text()
    assert "==> demo.log (last 60 of 100 lines)" in logs and "line 39\n" not in logs and "line 40\n" in logs
    assert "The main job on this GPU" in text and "| metric | a |" in text


@pytest.mark.e2e
@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_the_demo_check_runs_the_main_job_end_to_end_on_tiny_budgets(tmp_path):
    """The same check as on a GPU, on this CPU with tiny budgets: the copy holds all the main job needs."""
    budgets = {"PRETRAIN_ARGS": "--max_steps 1 --set training_params.per_device_train_batch_size=1 "
                                "--set training_params.gradient_accumulation_steps=1 --set data.sequence_length=128",
               "TRAIN_ARGS": "--max_steps 2 --set training_params.eval_max_batches=1",
               "EVAL_ARGS": "--max_eval_examples 6 --retention_max_tokens 2000", "NPROC": "1"}
    start = time.monotonic()
    check = gpu_demo.check_demo(tmp_path, Budget(600), budgets)
    assert check.name == "demo" and not check.passed and "missed:" in check.summary
    assert 0 < check.figures["seconds"] <= time.monotonic() - start
    assert "| held-out exact match |" in check.figures["table"] and "artefact" not in check.figures["table"]
    run = gpu_demo.demo_run(tmp_path / "project")
    assert run.name == "demo_job" and (run / "eval" / "eval_report.json").is_file()
    assert "(pre-training config/pretrain/tiny.json (no GPU (nvidia-smi not found)))" in check.summary \
        or shutil.which("nvidia-smi")
