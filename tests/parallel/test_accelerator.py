"""The accelerator set-up: bf16 'auto' follows the CPU's bf16 matmul instructions; fp16 without a GPU is refused;
the full state dict of the prepared model is keyed as the model names its weights."""
from __future__ import annotations

import io

import pytest
import torch

from train_helpers import tiny_llama
from utils.common.errors import UserError
from utils.parallel import accelerator as acc_module


@pytest.mark.skipif(torch.cuda.is_available(), reason="reads the CPU's flags only without a GPU")
@pytest.mark.parametrize(("flags", "fast"), [("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 amx_bf16", True),
                                             ("fpu avx2 avx512f", False), (None, False)])
def test_bf16_auto_follows_the_cpu_flags(monkeypatch, flags, fast):
    def fake_open(path, *args, **kwargs):
        assert path == "/proc/cpuinfo"
        if flags is None:
            raise PermissionError(13, "Permission denied")
        return io.StringIO(f"processor\t: 0\nflags\t\t: {flags}\n")

    monkeypatch.setattr(acc_module, "open", fake_open, raising=False)
    assert acc_module.fast_bf16_available() is fast


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed on a GPU")
def test_fp16_without_a_gpu_is_one_line():
    with pytest.raises(UserError, match="training_params.fp16: float16 training needs a GPU; use bf16 on CPU"):
        acc_module.make_accelerator("fp16")


def test_the_full_state_dict_is_keyed_as_the_model_names_it():
    from utils.model.loss import SupervisedLoss
    from utils.parallel.state_dict import lm_state_dict, unwrap_lm

    model = tiny_llama()
    accelerator = acc_module.make_accelerator("no")
    wrapped = accelerator.prepare(SupervisedLoss(model))
    assert unwrap_lm(accelerator, wrapped) is model
    state = lm_state_dict(accelerator, wrapped)
    assert set(state) == set(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
