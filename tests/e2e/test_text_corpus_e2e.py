"""scripts/01_prepare_text_corpus.py as a user runs it (`make prepare-text-corpus`): the tiny pre-training config's
sources in the embedded demo data, tokenized into shards with 2 and with 1 process, then trained from."""
from __future__ import annotations

import json

from e2e_helpers import run
from paths import ROOT

SCRIPT = str(ROOT / "scripts/01_prepare_text_corpus.py")


def test_the_demo_text_prepares_the_same_with_one_and_two_processes_and_trains(toy_tokenizer_dir, tmp_path):
    run(str(ROOT / "scripts/generate_demo_data.py"), "--output_dir", "data/demo", "--num_train", "200",
        "--num_test", "20", cwd=tmp_path)
    args = ["--config", str(ROOT / "config/pretrain/tiny.json"), "--tokenizer_path", str(toy_tokenizer_dir)]
    proc = run(SCRIPT, *args, "--num_proc", "2", "--partition_mb", "0.25", cwd=tmp_path)
    out = tmp_path / "data/text_processed/tiny"
    assert f"train on it with scripts/01_pretrain.py --data_dirs {out.relative_to(tmp_path)}" in proc.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert list(manifest["sources"]) == ["stdlib_docstrings", "stories", "worked_examples"]
    assert all(s["documents_train"] + s["documents_val"] > 0 for s in manifest["sources"].values())
    assert manifest["splits"]["train"]["num_shards"] > 1 and manifest["splits"]["val"]["documents"] > 0
    assert "# Data card: tiny (raw text)" in (out / "DATA_CARD.md").read_text()
    shards = {p.name: p.read_bytes() for p in out.glob("*.bin")}

    refused = run(SCRIPT, *args, cwd=tmp_path, check=False)
    assert refused.returncode == 2 and refused.stderr.strip() == f"error: {out.relative_to(tmp_path)}: already " \
        "exists; pass --force to replace it"
    run(SCRIPT, *args, "--num_proc", "1", "--partition_mb", "0.25", "--force", cwd=tmp_path)
    assert {p.name: p.read_bytes() for p in out.glob("*.bin")} == shards

    trained = run(str(ROOT / "scripts/01_pretrain.py"), *args, "--data_dirs", str(out), "--output_dir", "run",
                  "--max_steps", "2", "--set", "training_params.per_device_train_batch_size=2",
                  "--set", "training_params.eval_max_batches=2", cwd=tmp_path, env={"OMP_NUM_THREADS": "2"})
    assert "prepared corpora" in trained.stdout and (tmp_path / "run/final/config.json").is_file()
