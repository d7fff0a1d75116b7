"""Shared fixtures: a toy tokenizer trained by the pipeline's own code, paths to shared data."""
from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

from paths import ROOT, SHARED_DATA

sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


TIERS = {
    "e2e": ("e2e/", "demo/", "studio/test_studio_browser.py", "model/test_gguf_smollm2.py"),
    "distributed": ("parallel/test_fsdp2.py", "reliability/test_reliability_preemption.py",
                    "reliability/test_reliability_resume.py", "train/test_host_syncs.py",
                    "parallel/test_ray_prepare.py"),
    "stage": ("reliability/",),
}
"""Test tiers by file (the first match wins, anything else is ``unit``): ``make test-fast`` runs unit and stage,
``make test`` (what CI runs) every tier. e2e runs the scripts as a user does (a numbered script in a child
process, killed or limited or not), or a real model or llama.cpp; distributed launches several processes; stage
drives one stage in process on a tiny model. A test marked with a tier (``@pytest.mark.e2e``) is of that tier
whatever its file."""


TIER_NAMES = {"unit": "fast tests of one module, toy tokenizers",
              "stage": "one stage driven in process on a tiny model",
              "e2e": "scripts run as a user runs them, or a real model",
              "distributed": "several processes (torchrun, gloo, a local Ray instance)"}


def pytest_configure(config) -> None:
    for tier, what in TIER_NAMES.items():
        config.addinivalue_line("markers", f"{tier}: {what}")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if any(item.get_closest_marker(name) for name in TIER_NAMES):
            continue
        where = Path(str(item.fspath)).resolve().relative_to(ROOT / "tests").as_posix()
        tier = next((t for t, prefixes in TIERS.items() if where.startswith(prefixes)), "unit")
        item.add_marker(tier)


def _toy_text() -> str:
    import pydoc_data.topics

    topics = pydoc_data.topics.topics
    text = "\n".join(topics[k] for k in sorted(topics)[:40])
    chat = "\n".join(f"What is {a} plus {b}? The answer is {a + b}. Reverse the list [x, y, z]."
                     for a in range(30) for b in range(0, 30, 7))
    return text + "\n" + chat


@pytest.fixture(autouse=True, scope="session")
def packing_check_cache(tmp_path_factory):
    """The start-up packing check caches its verdicts in a directory of the session, never the user's cache."""
    os.environ["SFT_PIPELINE_CACHE"] = str(tmp_path_factory.mktemp("sft_pipeline_cache"))
    yield


THREAD_SETTINGS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "TOKENIZERS_PARALLELISM", "RAYON_NUM_THREADS")


@pytest.fixture(autouse=True)
def threads_and_signals_as_they_were():
    """A test leaves the process's thread settings and signal handlers as it found them: every later subprocess
    inherits the environment (a leaked OMP_NUM_THREADS=1 made later training runs compute differently) and a
    leaked SIGTERM handler turns a pool's shutdown into an exit."""
    env = {key: os.environ.get(key) for key in THREAD_SETTINGS}
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    leaked = [key for key in THREAD_SETTINGS if os.environ.get(key) != env[key]]
    leaked += [signal.Signals(sig).name for sig, handler in handlers.items() if signal.getsignal(sig) != handler]
    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    for sig, handler in handlers.items():
        signal.signal(sig, handler)
    assert not leaked, f"the test changed the process's {leaked} and left them so (put them back)"


@pytest.fixture(autouse=True)
def fresh_accelerator_state():
    """Each test gets its own accelerate state, as each real run is its own process.

    accelerate keeps one process-wide state and refuses a second Accelerator with another mixed
    precision; tests that train in-process with bf16 on and then off would otherwise collide."""
    yield
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


@pytest.fixture(scope="session")
def toy_tokenizer_dir(tmp_path_factory) -> Path:
    """An HF tokenizer directory (vocab 1000) made by utils.data.tokenizer, shared by the whole session."""
    from utils.data.tokenizer import export_hf_tokenizer, train_sentencepiece

    out = tmp_path_factory.mktemp("toy_tokenizer")
    corpus = out / "corpus.txt"
    corpus.write_text(_toy_text(), encoding="utf-8")
    train_sentencepiece(corpus, out / "toy", vocab_size=1000, model_type="bpe",
                        character_coverage=1.0, seed=0, max_sentence_length=16384, num_threads=1)
    export_hf_tokenizer(out / "toy.model", out / "toy")
    return out / "toy"


@pytest.fixture(scope="session")
def toy_tokenizer(toy_tokenizer_dir):
    from utils.data.tokenizer import load_tokenizer

    return load_tokenizer(toy_tokenizer_dir)


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not present")
    return SHARED_DATA


@pytest.fixture(scope="session")
def pipeline_work(tmp_path_factory) -> Path:
    """Demo data, a tokenizer and a pre-trained tiny model made by the real scripts (00, 01)."""
    from e2e_helpers import build_pipeline_work

    return build_pipeline_work(tmp_path_factory.mktemp("e2e"))
