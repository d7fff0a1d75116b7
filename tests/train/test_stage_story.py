"""The SFT stage reads as one story: following a real run from 03's main(), each utils/train module is entered
from at most two places in the project's code (the recipe and the stage call one module per concern, once or
twice; no helper module is bounced back into again and again). The recipe calls the stage's own builders (data,
model, plan, final) in its order, and the loop its eval samples: the stage is entered from 03, the recipe and the
loop, nowhere else. The script's calls into cli.py (its flags, overrides and inputs: the parsing) count as one
place."""
from __future__ import annotations

import collections
import sys
from pathlib import Path

from paths import ROOT
from reliability_helpers import sft_argv, sft_config, sft_in_process, sft_work

TRAIN = ROOT / "utils" / "train"
MAX_ENTRIES = 2


def _project_caller(frame):
    """The nearest calling frame in the project's own code (not the standard library or site-packages)."""
    caller = frame.f_back
    while caller is not None:
        path = Path(caller.f_code.co_filename)
        if path.is_absolute() and ROOT in path.parents and ".venv" not in path.parts:
            return caller
        caller = caller.f_back
    return None


def _one_place(callee: str, caller: str) -> bool:
    """Whether every call from ``caller`` into ``callee`` counts as one place (see the module's docstring)."""
    return (callee, caller) in {("stage_sft.py", "utils/train/recipe.py"), ("stage_sft.py", "utils/train/loop.py")} \
        or (callee == "cli.py" and caller.startswith("scripts/"))


def entries_of_a_run(argv: list[str]) -> dict[str, set]:
    """{train module: {(caller file, caller line)}} for the calls into each module from another file."""
    sites: dict[str, set] = collections.defaultdict(set)

    def trace(frame, event, _arg):
        callee = Path(frame.f_code.co_filename)
        if event == "call" and callee.parent == TRAIN and not frame.f_code.co_name.startswith("<") \
                and frame.f_code.co_name != "__post_init__":  # a config checking itself as it is made
            caller = _project_caller(frame)
            if caller is not None and Path(caller.f_code.co_filename) != callee:
                where = Path(caller.f_code.co_filename).relative_to(ROOT)
                sites[callee.name].add((str(where), caller.f_lineno, frame.f_code.co_name))
        return None

    sys.settrace(trace)
    try:
        assert sft_in_process(argv) == 0
    finally:
        sys.settrace(None)
    return sites


def test_each_train_module_is_entered_from_at_most_two_places(tmp_path_factory, toy_tokenizer_dir, tmp_path):
    work = sft_work(tmp_path_factory, toy_tokenizer_dir)
    argv = sft_argv(work, sft_config(work, "story", lora=True, max_steps=2), tmp_path / "run",
                    "--resume_from_checkpoint", "auto", "--max_steps", "2")
    sites = entries_of_a_run(argv)
    assert {"stage_sft.py", "recipe.py", "start.py", "corpora.py", "output.py", "resume.py", "run.py",
            "loop.py"} <= set(sites)
    builders = {c for c in sites["stage_sft.py"] if c[0] == "utils/train/recipe.py"}
    assert {c[2] for c in builders} >= {"data", "model", "plan", "final"}, builders
    places = {name: {c[0] if _one_place(name, c[0]) else c[:2] for c in calls} for name, calls in sites.items()}
    script = {c[:2] for c in sites["stage_sft.py"] if c[0].startswith("scripts/")}
    stage = places.pop("stage_sft.py")
    assert len(script) == 1 and stage <= script | {"utils/train/recipe.py", "utils/train/loop.py"}, stage
    crowded = {name: sorted(sites[name]) for name, where in places.items() if len(where) > MAX_ENTRIES}
    assert not crowded, crowded
