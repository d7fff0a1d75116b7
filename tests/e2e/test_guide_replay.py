"""The SFT guide's commands, typed as written, do what it says.

Every command of the design document's Quick Start, Detailed Usage, Recipes and Migration sections
(../shared/docs/industrial-sft-guide.md) runs in a fresh project directory: the repository's Makefile, scripts and
code, a copy of its configs. Nothing in a command is changed. What the test adds is the environment a user on this
machine would have: the guide's prerequisites (its 32k tokenizer, pre-trained presets), local copies of the hub
datasets (SFT_LOCAL_COPIES: no network here), and tiny budgets (PRETRAIN_ARGS / TRAIN_ARGS / EVAL_ARGS read by the
make targets; `python` and `accelerate` on PATH append the same flags to the training scripts). Then it checks that
each command wrote what the guide says, or refused in one line where the guide's own text is wrong (a typo'd path,
a checkpoint it never made).
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from paths import ROOT, SHARED_DATA

GUIDE = ROOT.parent / "shared" / "docs" / "industrial-sft-guide.md"
VENV = ROOT / ".venv"
PRETRAIN_ARGS = ("--max_steps 1 --set training_params.per_device_train_batch_size=1 "
                 "--set training_params.gradient_accumulation_steps=1 --set data.sequence_length=128")
TRAIN_ARGS = ("--max_steps 2 --set training_params.micro_batch_tokens=2048 "
              "--set training_params.gradient_accumulation_steps=1 --set training_params.eval_max_batches=2")
EVAL_ARGS = "--max_eval_examples 6 --retention_max_tokens 2000"

pytestmark = pytest.mark.skipif(not GUIDE.is_file() or not SHARED_DATA.is_dir() or not (VENV / "bin" / "python").is_file(),
                                reason="needs ../shared (the guide and the datasets) and the project's .venv")


def guide_commands(section: str) -> list[str]:
    """The shell commands of one ``##`` section of the guide, in order: each ```bash block, split into commands
    (continuation lines joined, comments dropped; a heredoc stays one command)."""
    text = GUIDE.read_text(encoding="utf-8")
    start = re.search(rf"^## .*{re.escape(section)}$", text, flags=re.M).start()  # headings start with an emoji
    end = text.find("\n## ", start + 1)
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text[start:end if end > 0 else None], flags=re.S):
        current, heredoc = "", None
        for line in block.splitlines():
            if heredoc:
                current += "\n" + line
                if line.strip() == heredoc:
                    commands.append(current)
                    current, heredoc = "", None
                continue
            if not current and (not line.strip() or line.lstrip().startswith("#")):
                continue
            current += ("\n" if current else "") + line
            if "<<" in line:
                heredoc = line.split("<<")[1].strip()
            elif not line.rstrip().endswith("\\"):
                commands.append(current)
                current = ""
    return commands


def _shims(folder: Path) -> Path:
    """`python` and `accelerate` that append the budget flags to the training scripts (what TRAIN_ARGS does for
    the make targets)."""
    folder.mkdir()
    for name, real in (("python", VENV / "bin" / "python"), ("accelerate", VENV / "bin" / "accelerate")):
        (folder / name).write_text(f"""#!/bin/bash
extra=""
for arg in "$@"; do
  case "$arg" in */01_pretrain.py) extra="$PRETRAIN_ARGS";; */03_sft_industrial.py) extra="$TRAIN_ARGS";; esac
done
exec {real} "$@" $extra
""")
        (folder / name).chmod(0o755)
    return folder


def _copies() -> str:
    shared = SHARED_DATA
    return ",".join([f"tatsu-lab/alpaca={shared}/instruct/alpaca_original_first100/alpaca_tiny.json",
                     f"OpenAssistant/oasst1={shared}/chat/oasst1_en_validation/en-validation.jsonl",
                     f"sahil2801/CodeAlpaca-20k={shared}/instruct/code_alpaca_2k/code_alpaca_2k.json",
                     f"teknium/GPTeacher-General-Instruct={shared}/instruct/gpteacher/codegen-instruct.json"])


class Project:
    """A fresh project directory that runs the repository's code."""

    def __init__(self, path: Path, shims: Path) -> None:
        self.path = path
        path.mkdir()
        for name in ("Makefile", "scripts", "utils", "requirements.txt", "requirements-qlora.txt",
                     "requirements-studio.txt", "requirements-bench.txt", "requirements-ray.txt"):
            (path / name).symlink_to(ROOT / name)
        shutil.copytree(ROOT / "config", path / "config")  # the Migration section writes a config of its own
        self.env = {**os.environ, "PATH": f"{shims}:{os.environ['PATH']}", "VENV": str(VENV),
                    "PRETRAIN_ARGS": PRETRAIN_ARGS, "TRAIN_ARGS": TRAIN_ARGS, "EVAL_ARGS": EVAL_ARGS,
                    "SFT_LOCAL_COPIES": _copies(), "OMP_NUM_THREADS": "2", "PYTHONUNBUFFERED": "1",
                    "DEMO_PRETRAIN_CONFIG": "config/pretrain/tiny.json"}  # the CPU recipe, also where a GPU is
        self.log = []

    def run(self, command: str, ok: bool = True) -> subprocess.CompletedProcess:
        proc = subprocess.run(["bash", "-c", command], cwd=self.path, env=self.env, capture_output=True, text=True,
                              timeout=900)
        self.log.append((command, proc.returncode))
        if ok and proc.returncode != 0:
            raise AssertionError(f"`{command}` failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
        return proc

    def prerequisites(self, sizes=("tiny",)) -> None:
        """The guide's Prerequisites: its global 32k tokenizer, pre-trained presets."""
        self.run("make tokenizer-train-mix TOKENIZER_CONFIG=config/tokenizer/spm32k.json")
        for size in sizes:
            self.run(f"make pretrain-{size}")

    def copy_prerequisites_from(self, other: "Project") -> None:
        for name in ("data/demo", "checkpoints/tokenizer", "checkpoints/pretrain"):
            shutil.copytree(other.path / name, self.path / name, symlinks=True)


def one_error_line(proc: subprocess.CompletedProcess) -> str:
    """The one ``error:`` line of a refused stage. Under ``accelerate launch`` the launcher adds a traceback of
    its own (CalledProcessError for the child's exit code 2); none comes from this project's code."""
    lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-3000:]
    trace = proc.stderr.partition("Traceback")[2]
    assert not trace or ("CalledProcessError" in trace and "/utils/" not in trace), proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> Project:
    """A project with the guide's prerequisites made once: the 32k tokenizer and the three pre-trained presets."""
    shims = _shims(tmp_path_factory.mktemp("shims") / "bin")
    project = Project(tmp_path_factory.mktemp("guide") / "base", shims)
    project.prerequisites(("tiny", "small", "base"))
    project.shims = shims
    return project


def fresh(base: Project, tmp_path: Path, name: str) -> Project:
    project = Project(tmp_path / name, base.shims)
    project.copy_prerequisites_from(base)
    return project


def summary(path: Path) -> dict:
    return json.loads((path / "training_summary.json").read_text())


def test_the_prerequisites_make_what_the_guide_assumes(base):
    assert (base.path / "checkpoints/tokenizer/spm32k.model").is_file()
    assert (base.path / "checkpoints/tokenizer/LAST").read_text().strip() == "spm32k"
    for size in ("tiny", "small", "base"):
        assert (base.path / f"checkpoints/pretrain/{size}/final/config.json").is_file()


def test_quick_start(base, tmp_path):
    project = fresh(base, tmp_path, "quick_start")
    commands = guide_commands("Quick Start")
    assert commands == ["make prepare-sft-corpus", "make sft-train-tiny", "make sft-eval", "make sft-pipeline-complete"]
    prepared = project.run(commands[0])
    assert "checkpoints/tokenizer/LAST" in prepared.stdout  # the guide's global tokenizer, and why
    corpus = project.path / "data/sft_processed/demo"
    assert json.loads((corpus / "manifest.json").read_text())["tokenizer_metadata"]["vocab_size"] == 32000
    trained = project.run(commands[1])
    assert "data/sft_processed/LAST: the last make prepare-sft-corpus" in trained.stdout
    final = project.path / "checkpoints/sft_industrial/tiny/final"
    assert summary(final)["config"]["name"] == "lora_tiny" and (final / "adapter_config.json").is_file()
    assert summary(final)["model_path"] == "checkpoints/pretrain/tiny/final"
    evaluated = project.run(commands[2])
    assert "checkpoints/sft_industrial/LAST: the last make sft-train-*" in evaluated.stdout
    report = json.loads((project.path / "checkpoints/sft_industrial/tiny/eval/eval_report.json").read_text())
    assert report["model_path"].endswith("checkpoints/sft_industrial/tiny/final")
    project.run(commands[3])  # the demo job: its own tokenizer, model, corpus and run, beside the user's
    assert (project.path / "checkpoints/sft_industrial/demo_job/SUMMARY.md").is_file()
    assert summary(final)["config"]["name"] == "lora_tiny", "the demo job left the user's run alone"


def test_detailed_usage(base, tmp_path):
    project = fresh(base, tmp_path, "detailed")
    commands = guide_commands("Detailed Usage")
    assert len(commands) == 6, commands
    for command in (commands[0], commands[2]):  # prepare alpaca_chatml, then openassistant_instruct
        proc = project.run(command)
        assert "data/tokenizer/spm32k.model: not found; using checkpoints/tokenizer/spm32k.model" in proc.stderr
    corpus = project.path / "data/sft_processed/alpaca_chatml_32k_1024"
    before = {p.name: p.read_bytes() for p in corpus.iterdir() if p.is_file()}
    assert commands[1] == commands[0]  # the guide repeats the command: the corpus exists by then
    proc = project.run(commands[1], ok=False)
    assert one_error_line(proc) == "error: data/sft_processed/alpaca_chatml_32k_1024: already exists; pass --force to replace it"
    assert {p.name: p.read_bytes() for p in corpus.iterdir() if p.is_file()} == before
    for name, template in (("alpaca_chatml_32k_1024", "chatml"), ("openassistant_instruct_32k_1024", "instruct")):
        manifest = json.loads((project.path / "data/sft_processed" / name / "manifest.json").read_text())
        assert manifest["template"]["name"] == template and manifest["tokenizer_metadata"]["vocab_size"] == 32000
    project.run(commands[3])  # accelerate launch: single dataset
    assert (project.path / "checkpoints/sft_industrial/tiny/final/adapter_model.safetensors").is_file()
    proc = project.run(commands[4], ok=False)  # multi-dataset: the guide's tokenizer path has a typo (smp32k)
    assert proc.returncode != 0
    assert one_error_line(proc) == ("error: data/tokenizer/smp32k.model: tokenizer not found; did you mean "
                                    "checkpoints/tokenizer/spm32k.model? (make tokenizer-train-mix writes tokenizers "
                                    "to checkpoints/tokenizer/)")
    proc = project.run(commands[4].replace("smp32k", "spm32k"))  # as meant: two templates, weighted 0.7 / 0.3
    assert "its examples keep their own: instruct in openassistant_instruct_32k_1024" in proc.stdout
    final = project.path / "checkpoints/sft_industrial/small_multi/final"
    assert summary(final)["data_weights"] == [0.7, 0.3]
    proc = project.run(commands[5], ok=False)  # resume from a checkpoint-1000 this run never made
    assert one_error_line(proc).startswith("error: checkpoints/sft_industrial/small/checkpoint-1000: not a "
                                           "complete checkpoint")
    assert not (project.path / "checkpoints/sft_industrial/small").exists()


def test_recipes(base, tmp_path):
    project = fresh(base, tmp_path, "recipes")
    commands = guide_commands("Examples and Recipes")
    assert len(commands) == 6, commands
    project.run(commands[0])  # Recipe 1: sft-custom with alpaca_chatml, lora_tiny, the tiny model
    final = project.path / "checkpoints/sft_industrial/lora_tiny/final"
    assert summary(final)["data_dirs"] == ["data/sft_processed/alpaca_chatml"]
    project.run(commands[1])  # Recipe 2: multi_dataset_chatml, then sft-train-small with lora_small
    trained = project.run(commands[2])
    assert "data/sft_processed/multi_dataset_chatml" in trained.stdout
    small = project.path / "checkpoints/sft_industrial/small/final"
    assert summary(small)["config"]["name"] == "lora_small"
    assert summary(small)["model_path"] == "checkpoints/pretrain/small/final"
    assert summary(small)["data_dirs"] == ["data/sft_processed/multi_dataset_chatml"]
    for command in commands[3:]:  # Recipe 3: production_mix, sft-train-base, sft-eval
        project.run(command)
    base_run = project.path / "checkpoints/sft_industrial/base"
    assert summary(base_run / "final")["config"]["name"] == "lora_base"
    assert summary(base_run / "final")["data_dirs"] == ["data/sft_processed/production_mix"]
    report = json.loads((base_run / "eval/eval_report.json").read_text())
    assert report["base_model_path"] == "checkpoints/pretrain/base/final"


def test_migration(base, tmp_path):
    project = fresh(base, tmp_path, "migration")
    commands = guide_commands("Migration from Legacy SFT")
    assert commands[0].startswith("python scripts/03_sft.py")  # the legacy way, shown for comparison only
    rows = [{"prompt": f"What is {a} plus {b}?", "response": f"{a} plus {b} is {a + b}."}
            for a in range(12) for b in range(12)]
    (project.path / "data").mkdir(exist_ok=True)
    (project.path / "data/my_conversations.json").write_text(json.dumps(rows))  # the user's data
    for command in commands[1:]:
        project.run(command)
    config = json.loads((project.path / "config/sft_datasets/my_conversations.json").read_text())
    assert config["name"] == "my_conversations"
    final = project.path / "checkpoints/sft_industrial/tiny/final"
    assert summary(final)["data_dirs"] == ["data/sft_processed/my_conversations"]
