"""scripts/benchmark_gpu.py, the parts that run without a GPU: flags, refusal, report, the reference path."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from scripts_loader import load_script
from utils.bench.gpu import Check, alone, compare_with_alone, report
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
                                           (["--steps", "x"], "--steps")])
def test_bad_flags_are_one_line(argv, message, capsys):
    assert run_cli(load_script("benchmark_gpu").main, argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_flags_default_to_every_check():
    args = load_script("benchmark_gpu").parse_args([])
    assert args.checks == ["varlen", "peak", "throughput", "resume", "fsdp2"] and args.steps == 12
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
