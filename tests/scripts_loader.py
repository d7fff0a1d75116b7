"""Import a numbered script (``scripts/01_pretrain.py``) as a module in tests."""
from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def load_script(stem: str):
    spec = importlib.util.spec_from_file_location(f"script_{stem}", SCRIPTS / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
