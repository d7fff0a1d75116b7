"""make bench-gpu-quick on the CPU: each check's code path, the CUDA-only parts under SFT_EMULATE_CUDA_KERNELS and
strict stand-ins of the CUDA calls that hold them to torch's real signatures and rules."""
from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import utils.model.kernels as kernels
from scripts_loader import load_script
from train_helpers import count_stand_in_calls, emulate_cuda_kernels, random_store, tiny_llama
from utils.bench import gpu_model, gpu_profile, gpu_quick
from utils.bench.gpu import throughput_command
from utils.bench.gpu_runner import Budget, run_checks
from utils.bench.syncs import sync_reason
from utils.common.errors import run_cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
SHAPE = {"hidden": 32, "layers": 2, "heads": 4, "kv_heads": 2, "vocab": 128}
LENGTHS = (5, 17, 1, 30, 12)
REAL_SET, REAL_GET, REAL_SYNC = (torch.cuda.set_sync_debug_mode, torch.cuda.get_sync_debug_mode,
                                 torch.cuda.synchronize)


@pytest.fixture
def emulate(monkeypatch):
    """The CUDA path on the CPU (this torch's varlen_attn stand-in); counts the stand-in's calls."""
    calls = count_stand_in_calls(monkeypatch)
    emulate_cuda_kernels(monkeypatch, "1")
    yield calls
    emulate_cuda_kernels(monkeypatch, None)


# ------------------------------------------------------------------------------------- varlen through models
def test_packed_rows_through_llama_and_qwen2_match_each_example_alone_under_bf16_autocast(emulate):
    check = gpu_model.check_varlen_models("cpu", shape=SHAPE, lengths=LENGTHS)
    assert check.passed, check.summary
    assert emulate["n"] == len(gpu_model.FAMILIES) * SHAPE["layers"]  # one kernel call per layer per packed row
    assert "q/k/v in bfloat16" in check.figures["route"] and "fp32 weights" in check.summary
    for family in gpu_model.FAMILIES:
        assert check.figures[family]["tokens"] == sum(LENGTHS) and check.figures[family]["grad_rel"] > 0


def test_fp32_matches_tightly_and_the_check_says_the_kernel_is_not_used_without_half_precision(emulate):
    diff = gpu_model.packed_vs_alone(gpu_model.family_model("qwen2", **SHAPE), LENGTHS, "cpu", torch.float32)
    assert diff["loss_rel"] < 1e-5 and diff["grad_rel"] < 1e-5 and diff["problem"] is None
    check = gpu_model.check_varlen_models("cpu", torch.float32, SHAPE, LENGTHS)
    assert not check.passed and "the varlen kernel is not used" in check.summary and emulate["n"] == 0


def test_attention_across_examples_fails_the_check(emulate, monkeypatch):
    real = kernels._attend

    def leaking(query, key, value, cu, scale, left, causal):  # the whole row as one example
        return real(query, key, value, torch.tensor([0, query.shape[0]], dtype=torch.int32), scale, left, causal)

    monkeypatch.setattr(kernels, "_attend", leaking)
    check = gpu_model.check_varlen_models("cpu", shape=SHAPE, lengths=LENGTHS)
    assert not check.passed and "differ packed and alone" in check.figures["llama"]["problem"]
    assert check.figures["llama"]["grad_rel"] > 5 * gpu_model.TOLERANCE[torch.bfloat16]["grad"]


def test_inputs_the_real_kernel_refuses_stop_the_check(emulate, monkeypatch):
    monkeypatch.setattr(kernels, "_check", lambda *a: (_ for _ in ()).throw(
        RuntimeError("FlashAttention only support fp16 and bf16 data type")))
    with pytest.raises(RuntimeError, match="fp16 and bf16"):
        gpu_model.packed_vs_alone(gpu_model.family_model("llama", **SHAPE), LENGTHS, "cpu")


# ------------------------------------------------------------------------------------- a tiny run
def tiny_run(tmp_path, name="run", params=None, steps=6, bf16=False):
    from accelerate.utils import set_seed

    from utils.monitor.run_plan import RunPlan
    from utils.parallel.accelerator import make_accelerator
    from utils.train.config import TrainingParams
    from utils.checkpoint.record import RunRecord
    from utils.train.run import TrainData, build_run
    from utils.train.start import RunStart, ready_to_train, resolve_auto

    params, _ = resolve_auto(TrainingParams(max_steps=steps, logging_steps=1, bf16=bf16,
                                            **(params or {"micro_batch_tokens": 96})), torch.device("cpu"))
    set_seed(0)
    model, _ = ready_to_train(tiny_llama(), None, params, "tiny llama")
    start = RunStart(make_accelerator(params.mixed_precision()), None, "")
    return build_run(start, model, TrainData([random_store("a", 60, 1)], [1.0], [], 40), params,
                     output_dir=tmp_path / name, record=RunRecord(data_hashes="x", tokenizer_sha256="x"),
                     plan=RunPlan())


def tiny_runs(tmp_path, bf16=False):
    return lambda name, params, steps: tiny_run(tmp_path, name, params, steps, bf16)


# ------------------------------------------------------------------------------------- syncs
class StrictCudaSyncDebug:
    """torch.cuda's sync debug calls as a CPU build cannot run them: arguments bound against the real functions'
    signatures and checked as torch checks them; in "warn" mode every op that would sync a GPU (and
    ``synchronize`` itself) warns with CUDA's own message, as ``warn_or_error_on_sync`` does."""

    class _Warner(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if sync_reason(func, args, kwargs):
                warnings.warn(gpu_profile.SYNC_WARNING, UserWarning)
            return func(*args, **(kwargs or {}))

    def __init__(self):
        self.mode, self.modes_set, self.synchronized, self._warner = 0, [], [], None

    def set_sync_debug_mode(self, *args, **kwargs):
        value = inspect.signature(REAL_SET).bind(*args, **kwargs).arguments["debug_mode"]
        if isinstance(value, str):
            if value not in ("default", "warn", "error"):
                raise RuntimeError("invalid value of debug_mode, expected one of `default`, `warn`, `error`")
            value = {"default": 0, "warn": 1, "error": 2}[value]
        assert type(value) is int and value in (0, 1, 2), value
        self.modes_set.append(value)
        if value and self._warner is None:
            self._warner = self._Warner()
            self._warner.__enter__()
        elif not value and self._warner is not None:
            self._warner.__exit__(None, None, None)
            self._warner = None
        self.mode = value

    def get_sync_debug_mode(self, *args, **kwargs):
        inspect.signature(REAL_GET).bind(*args, **kwargs)
        return self.mode

    def synchronize(self, *args, **kwargs):
        inspect.signature(REAL_SYNC).bind(*args, **kwargs)
        self.synchronized.append(self.mode)
        if self.mode:
            warnings.warn(gpu_profile.SYNC_WARNING, UserWarning)

    def install(self, monkeypatch):
        for name in ("set_sync_debug_mode", "get_sync_debug_mode", "synchronize"):
            monkeypatch.setattr(torch.cuda, name, getattr(self, name))
        monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", self.reset_peak_memory_stats)
        monkeypatch.setattr(torch.cuda, "max_memory_allocated", self.max_memory_allocated)
        return self

    def reset_peak_memory_stats(self, *args, **kwargs):
        inspect.signature(REAL_RESET).bind(*args, **kwargs)

    def max_memory_allocated(self, *args, **kwargs):
        inspect.signature(REAL_MAX).bind(*args, **kwargs)
        return 2 ** 20


REAL_RESET, REAL_MAX = torch.cuda.reset_peak_memory_stats, torch.cuda.max_memory_allocated


def test_the_cuda_calls_have_the_signatures_the_bench_uses():
    assert list(inspect.signature(REAL_SET).parameters) == ["debug_mode"]
    assert not inspect.signature(REAL_GET).parameters
    assert list(inspect.signature(REAL_SYNC).parameters) == ["device"]
    assert hasattr(torch.profiler.ProfilerActivity, "CUDA") and hasattr(torch, "OutOfMemoryError")
    from torch.autograd.profiler_util import Kernel
    assert Kernel._fields == ("name", "device", "duration")


def test_syncs_on_the_cpu_are_counted_by_the_dispatch_counter_and_are_zero(tmp_path, emulate):
    per_step, counts = gpu_profile.syncs_per_step(tiny_run(tmp_path, bf16=True), steps=2)
    assert per_step == 0 and not counts and emulate["n"] > 0  # the CUDA path's kernel ran


@pytest.mark.parametrize("leak", [False, True])
def test_syncs_on_cuda_use_the_sync_debug_mode_outside_any_synchronize(tmp_path, monkeypatch, leak):
    fake = StrictCudaSyncDebug().install(monkeypatch)
    run = tiny_run(tmp_path)
    if leak:  # a host read of the loss in every step: one sync per step
        real = gpu_profile.train_step
        monkeypatch.setattr(gpu_profile, "train_step", lambda r, b: real(r, b)[0].item())
    per_step, counts = gpu_profile.syncs_per_step(run, steps=3, cuda=True)
    assert fake.modes_set == [1, 0] and fake.mode == 0  # warn, then the mode found before
    assert fake.synchronized == [0, 0]  # both synchronize calls outside the counted window
    assert per_step == (1.0 if leak else 0.0)
    if leak:
        assert sum(counts.values()) == 3 and all(":" in where for where in counts)


# ------------------------------------------------------------------------------------- profile
KERNELS = [  # (kernel, the ops that launched it, microseconds), as a CUDA profile of a step names them
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 64, 4>>",
     ["aten::_flash_attention_forward", "aten::_scaled_dot_product_flash_attention"], 100.0),
    ("void flash::flash_bwd_dq_dk_dv_loop_seqk_parallel_kernel<...>", ["aten::_flash_attention_backward"], 120.0),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", ["aten::mm", "aten::linear"], 200.0),
    ("nvjet_tst_128x256_64x4_2x1_v_bz_coopB_NNT", ["aten::mm", "MmBackward0"], 50.0),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_32x32_128x2_tn_align8>",
     ["aten::addmm"], 30.0),
    ("void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float, float, float, LogSoftMaxForwardEpilogue>",
     ["aten::_log_softmax", "aten::log_softmax", "aten::cross_entropy_loss"], 30.0),
    ("void at::native::(anonymous namespace)::nll_loss_forward_reduce_cuda_kernel_2d<float, float, long>",
     ["aten::nll_loss_forward"], 5.0),
    ("void at::native::multi_tensor_apply_kernel<FusedAdamMathFunctor<float, 4, ADAM_MODE(1), false>>",
     ["aten::_fused_adamw_", "optimizer_step"], 40.0),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::FillFunctor<float>>",
     ["aten::fill_", "aten::zero_", "optimizer_step"], 4.0),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>>",
     ["aten::add", "forward_backward"], 10.0),
    ("void at::native::(anonymous namespace)::rms_norm_kernel<float>", ["aten::_fused_rms_norm"], 6.0),
]


def test_cuda_kernels_are_split_into_attention_matmul_loss_optimizer_other_and_idle():
    split = gpu_profile.split_time(KERNELS, wall_us=1000.0)
    assert split == {"attention": 220.0, "matmul": 280.0, "loss": 35.0, "optimizer": 44.0, "other": 16.0,
                     "idle": 405.0}
    assert gpu_profile.split_time(KERNELS, wall_us=100.0)["idle"] == 0.0


def test_kernels_are_read_from_the_profilers_own_events():
    from torch.autograd.profiler_util import FunctionEvent

    region = FunctionEvent(id=1, name="optimizer_step", thread=0, start_us=0, end_us=100)
    op = FunctionEvent(id=2, name="aten::_fused_adamw_", thread=0, start_us=1, end_us=50)
    op.set_cpu_parent(region)
    op.append_kernel("multi_tensor_apply_kernel<FusedAdamMathFunctor>", 0, 40)
    mm = FunctionEvent(id=3, name="aten::mm", thread=0, start_us=60, end_us=70)
    mm.append_kernel("nvjet_tst_128x256", 0, 7)
    items = gpu_profile.device_kernels([region, op, mm])
    assert items == [("multi_tensor_apply_kernel<FusedAdamMathFunctor>", ["aten::_fused_adamw_", "optimizer_step"],
                      40.0), ("nvjet_tst_128x256", ["aten::mm"], 7.0)]
    assert gpu_profile.split_time(items, 100.0)["optimizer"] == 40.0


@pytest.mark.parametrize("cuda", [False, True], ids=["cpu", "cuda-branch"])
def test_the_profile_of_real_steps_adds_up(tmp_path, monkeypatch, emulate, cuda):
    fake = StrictCudaSyncDebug().install(monkeypatch)
    split = gpu_profile.profile_split(tiny_run(tmp_path, bf16=True), steps=2, cuda=cuda)
    assert sum(split[k] for k in gpu_profile.CATEGORIES) == pytest.approx(split["step"], rel=1e-6)
    if cuda:  # a CPU build records no device kernels: all idle; synchronize brackets the profiled steps
        assert split["idle"] == pytest.approx(split["step"]) and fake.synchronized == [0, 0]
    else:
        for group in ("attention", "matmul", "loss", "optimizer", "other"):
            assert split[group] > 0, (group, split)
        assert "idle" in gpu_profile.profile_line(split)


# ------------------------------------------------------------------------------------- tokens/s and the quick bench
def test_tokens_per_second_at_each_micro_batch_and_out_of_memory_recorded(tmp_path, monkeypatch):
    fake = StrictCudaSyncDebug().install(monkeypatch)
    figures = gpu_profile.tokens_per_second(tiny_run(tmp_path), steps=2, warmup=1, cuda=True)
    assert figures["tokens"] > 0 and figures["tokens_per_s"] > 0 and figures["peak_gpu_mb"] == 1.0
    assert fake.synchronized == [0, 0]
    check = gpu_quick.check_tokens(tiny_runs(tmp_path), sizes=(64, 128), steps=1, warmup=1)
    assert check.passed and set(check.figures) == {"64", "128"} and check.summary.startswith("64 tokens: ")

    def oom(name, params, steps):
        if params["micro_batch_tokens"] == 128:
            raise torch.OutOfMemoryError("CUDA out of memory")
        return tiny_run(tmp_path, name, params, steps)

    check = gpu_quick.check_tokens(oom, sizes=(64, 128), steps=1, warmup=1)
    assert not check.passed and check.figures["128"] == {"error": "out of GPU memory"}


def test_the_quick_checks_run_in_order_within_the_budget(tmp_path, emulate):
    named = gpu_quick.quick_checks(tmp_path, Budget(600), tmp_path / "data", tiny_runs(tmp_path, bf16=True), "cpu",
                                   micro_tokens=96)
    assert tuple(named) == gpu_quick.QUICK_CHECKS
    monkey = {"varlen": lambda: gpu_model.check_varlen_models("cpu", shape=SHAPE, lengths=LENGTHS)}
    checks = run_checks(["varlen", "syncs", "profile"], {**named, **monkey}, Budget(600))
    assert [(c.name, c.passed) for c in checks] == [("varlen", True), ("syncs", True), ("profile", True)], \
        [c.summary for c in checks]
    assert "0.00 host-device syncs per steady-state step" in checks[1].summary and "SyncCounter" in checks[1].summary
    assert checks[2].summary.startswith("96 tokens micro-batch: attention ")
    spent = run_checks(list(gpu_quick.QUICK_CHECKS), named, Budget(4))
    assert all(c.summary == "not run: the bench's time limit was spent" for c in spent)


def test_quick_throughput_keeps_its_corpus_between_calls_and_leaves_smollm2_out(tmp_path):
    command = throughput_command(tmp_path, gpu_quick.THROUGHPUT_STEPS, False, tmp_path / "data" / "throughput")
    flags = dict(zip(command[2::2], command[3::2]))
    assert flags["--work_dir"] == str(tmp_path / "data" / "throughput") and flags["--steps"] == "6"
    assert "smollm2_full" not in command and flags["--report"] == str(tmp_path / "throughput.md")


def test_quick_flags(capsys):
    script = load_script("benchmark_gpu")
    args = script.parse_args(["--quick"])
    assert tuple(args.checks) == gpu_quick.QUICK_CHECKS == script.QUICK and args.time_limit == 240
    assert "demo" not in args.checks and args.data_dir.name == "bench_gpu"
    assert script.parse_args([]).time_limit == 360 and script.parse_args(["--quick", "--time_limit", "90"]).time_limit == 90
    assert run_cli(script.main, ["--checks", "syncs", "tokens"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--checks syncs tokens: checks of the quick bench; add --quick" in err[0]
