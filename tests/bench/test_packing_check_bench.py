"""scripts/benchmark_packing_check.py: a type checked once and read back from its own cache; an unknown type is
one line."""
from __future__ import annotations

from scripts_loader import load_script
from utils.common.errors import run_cli


def test_the_check_is_timed_checked_and_cached(capsys):
    assert run_cli(load_script("benchmark_packing_check").main, ["--types", "qwen3", "bloom"]) == 0
    rows = [line.split(" | ") for line in capsys.readouterr().out.splitlines() if line.startswith("| qwen3")
            or line.startswith("| bloom")]
    assert rows[0][1] == "packed == alone" and float(rows[0][2]) > 0 and float(rows[0][3]) < float(rows[0][2])
    assert rows[1][1] == "refused" and "attention interface" in rows[1][4]


def test_an_unknown_type_is_one_line(capsys):
    assert run_cli(load_script("benchmark_packing_check").main, ["--types", "nope"]) == 2
    assert "error: --types nope: not a model type transformers knows" in capsys.readouterr().err
