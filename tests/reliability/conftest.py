"""The reliability suite's shared work directory: a tokenizer, prepared corpora and a tiny model, per module."""
from __future__ import annotations

import pytest

from reliability_helpers import sft_work


@pytest.fixture(scope="module")
def work(tmp_path_factory, toy_tokenizer_dir):
    return sft_work(tmp_path_factory, toy_tokenizer_dir)
