"""Where the repository and the shared datasets are, for test modules (a test module importing from
``conftest`` would get whichever conftest.py pytest imported last under that name)."""
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"
