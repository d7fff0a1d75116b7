"""Flags that change a run for once: --set (any config field, checked like the file and recorded), --eval_prompts
(a prompts file of the SFT guide's layout, for training samples and for evaluation), and training parameters that do
not apply on this device being said, not silently dropped."""
from __future__ import annotations

import json

from reliability_helpers import error_line, script, sft_argv, sft_config, sft_in_process, sft_work, write_json
from utils.common.errors import run_cli


def test_set_and_eval_prompts_are_applied_recorded_and_announced(tmp_path_factory, toy_tokenizer_dir, tmp_path,
                                                                  capsys):
    work = sft_work(tmp_path_factory, toy_tokenizer_dir)
    prompts = write_json(tmp_path / "prompts.json", {"eval_prompts": ["What is 4 plus 4?", "Reverse the list [1, 2]."]})
    out = tmp_path / "run"
    argv = sft_argv(work, sft_config(work, "flags", lora=True, max_steps=2), out, "--eval_prompts", str(prompts),
                    "--set", "training_params.learning_rate=0.0005", "--set", "lora_config.r=2")
    assert sft_in_process(argv) == 0
    printed = capsys.readouterr().out
    assert f"(--eval_prompts {prompts})" in printed
    assert "pinned batches" in printed and "nothing is copied to a device on the CPU" in printed
    summary = json.loads((out / "final" / "training_summary.json").read_text())
    assert summary["config"]["training_params"]["learning_rate"] == 0.0005 and summary["config"]["lora_config"]["r"] == 2
    assert summary["overrides"] == {"training_params.learning_rate": "--set training_params.learning_rate=0.0005",
                                    "lora_config.r": "--set lora_config.r=2",
                                    "evaluation_config.eval_prompts": f"--eval_prompts {prompts}"}
    sampled = {json.loads(line)["prompt"] for line in (out / "samples.jsonl").read_text().splitlines()}
    assert sampled == {"What is 4 plus 4?", "Reverse the list [1, 2]."}

    report_dir = tmp_path / "eval"
    code = run_cli(script("04_evaluate_sft").main, ["--model_path", str(out / "final"), "--output_dir",
                                                    str(report_dir), "--eval_prompts", str(prompts), "--no_progress"])
    assert code == 0
    report = json.loads((report_dir / "eval_report.json").read_text())
    assert [s["prompt"] for s in report["tuned"]["samples"]] == ["What is 4 plus 4?", "Reverse the list [1, 2]."]
    assert report["setup"]["eval prompts"]["from"] == f"--eval_prompts {prompts}"


def test_bad_set_and_prompt_files_are_one_line_and_write_nothing(tmp_path_factory, toy_tokenizer_dir, tmp_path,
                                                                  capsys):
    work = sft_work(tmp_path_factory, toy_tokenizer_dir)
    config = sft_config(work, "flags_bad", lora=True, max_steps=2)
    out = tmp_path / "run"
    cases = [(["--set", "training_params.micro_batch_tokens=lots"],
              f"error: {config} with --set: training_params.micro_batch_tokens: 'lots' is not of type"),
             (["--set", "training_params.learning_rate.x=1"],
              "error: --set training_params.learning_rate.x: learning_rate is not a section of the config"),
             (["--set", "learning_rate"], "error: --set 'learning_rate': expected FIELD=VALUE")]
    empty = write_json(tmp_path / "empty.json", {"eval_prompts": ["fine", "  "]})
    cases.append((["--eval_prompts", str(empty)],
                  f"error: --eval_prompts {empty}: eval_prompts[1] is empty; give non-empty text prompts"))
    for extra, message in cases:
        assert sft_in_process(sft_argv(work, config, out, *extra)) == 2, extra
        assert error_line(capsys).startswith(message), extra
    assert not out.exists()
