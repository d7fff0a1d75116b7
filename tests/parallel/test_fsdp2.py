"""Sharded training through the trainer's own code path: FSDP2 (``--sharding fsdp2``) in 2 processes on the CPU
(torchrun, gloo). Train, checkpoint, SIGKILL one rank, resume; compare with an uninterrupted 2-process run (bit
for bit), with a 1-process run (within float tolerance: the ranks' gradients are summed in another order), and
across world sizes (2 -> 1, 1 -> 2); LoRA and full fine-tuning; 2 "nodes" on one machine."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from launch_helpers import free_port, torchrun
from paths import ROOT
from reliability_helpers import (final_weights, newest_state, sft_argv, sft_config, sft_in_process, sft_with_fault,
                                 sft_work)

SFT_SCRIPT = str(ROOT / "scripts" / "03_sft_industrial.py")


@pytest.fixture(scope="module")
def work(tmp_path_factory, toy_tokenizer_dir):
    return sft_work(tmp_path_factory, toy_tokenizer_dir)


@pytest.fixture(autouse=True)
def one_thread_per_process(monkeypatch):
    """Every launched process computes with one thread: two processes on two cores, and the same float order in
    every run that is compared bit for bit."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def sharded(work, config, out, *extra: str, fault: str = "term@update:99"):
    """03 under torchrun, 2 ranks, --sharding fsdp2 (``fault`` injected; the default never fires)."""
    return sft_with_fault(fault, sft_argv(work, config, out, "--sharding", "fsdp2", *extra), launcher=torchrun())


def configs(work, lora: bool, name: str):
    """The same run as 2 ranks x accumulation 1 and as 1 process x accumulation 2 (the same global steps). No
    dropout: each rank draws its own masks, so only a dropout-free run can equal its 1-process twin."""
    common = {"max_steps": 6, "eval_steps": 3, "save_steps": 2, "save_total_limit": None}
    paths = []
    for world, accum in ((2, 1), (1, 2)):
        path = sft_config(work, f"{name}_w{world}", lora=lora, gradient_accumulation_steps=accum, **common)
        config = json.loads(path.read_text())
        if lora:
            config["lora_config"]["lora_dropout"] = 0.0
        path.write_text(json.dumps(config))
        paths.append(path)
    return paths


_STRAIGHT: dict = {}


def straight(work, lora: bool):
    """The uninterrupted 2-rank sharded run (LoRA or full), made once per session."""
    name = f"fsdp_{'lora' if lora else 'full'}"
    if name not in _STRAIGHT:
        out = work / "out" / f"{name}_straight"
        proc = sharded(work, configs(work, lora, name)[0], out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert "FSDP2 over 2 rank(s)" in proc.stdout
        _STRAIGHT[name] = out
    return _STRAIGHT[name]


def assert_close(a, b, atol=1e-5):
    assert a.keys() == b.keys()
    far = [k for k in a if not np.allclose(a[k].float().numpy(), b[k].float().numpy(), atol=atol)]
    assert not far, far[:5]


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_sharded_kill_one_rank_then_resume_is_bit_identical(work, lora):
    name = f"fsdp_{'lora' if lora else 'full'}"
    two, one = configs(work, lora, name)
    cut, single = (work / "out" / f"{name}_{kind}" for kind in ("cut", "single"))
    reference = straight(work, lora)
    proc = sharded(work, two, cut, fault="kill-rank1@update:5")
    assert proc.returncode != 0 and not (cut / "final").exists(), proc.stderr[-3000:]
    state = newest_state(cut)
    assert state["step"] == 4 and state["world_size"] == 2
    proc = sharded(work, two, cut, "--resume_from_checkpoint", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from checkpoint-4" in proc.stdout
    a, b = final_weights(reference), final_weights(cut)
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run differs from the uninterrupted one"
    assert newest_state(cut)["loss_history"] == newest_state(reference)["loss_history"]

    assert sft_in_process(sft_argv(work, one, single)) == 0  # one process, unsharded, accumulation 2
    assert newest_state(single)["loss_history"] == pytest.approx(newest_state(reference)["loss_history"], rel=1e-4)
    assert_close(final_weights(single), a)


def test_a_sharded_checkpoint_is_written_by_every_rank_and_resumes_on_one_process(work):
    """Each rank writes its own shard (DCP): no file holds the whole weights or optimizer state, and a 2-rank
    checkpoint resumes on one unsharded process, resharded, exactly as the 2-rank run goes on."""
    two, one = configs(work, False, "fsdp_2to1")
    out, ref = work / "out" / "fsdp_2to1", straight(work, False)
    proc = sharded(work, two, out, fault="kill@update:3")
    assert proc.returncode != 0, proc.stderr[-3000:]
    checkpoint = out / "checkpoint-2"
    assert not (checkpoint / "optimizer.pt").exists() and not (checkpoint / "model.safetensors").exists()
    files, chunks = shard_layout(checkpoint / "sharded")
    assert files == {"__0_0.distcp", "__1_0.distcp"}
    moments = {key: where for key, where in chunks.items() if key.endswith(".exp_avg") and "layers" in key}
    assert moments and all(where == files for where in moments.values()), sorted(moments.items())[:3]
    layer_weights = {key: where for key, where in chunks.items()
                     if key.startswith("model.") and "layers" in key and key.endswith("proj.weight")}
    assert layer_weights and all(where == files for where in layer_weights.values())
    assert_close(dcp_weights(straight(work, False) / "checkpoint-6"), final_weights(ref), atol=0)

    # 2 ranks -> 1, in a process of its own: loading DCP shards leaves process-wide state that would change the
    # float results of later in-process runs of the suite
    proc = sft_with_fault("term@update:99", sft_argv(work, one, out, "--resume_from_checkpoint", "auto"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert newest_state(out)["world_size"] == 1
    assert_close(final_weights(out), final_weights(ref))
    assert newest_state(out)["loss_history"] == pytest.approx(newest_state(ref)["loss_history"], rel=1e-4)


def dcp_weights(checkpoint):
    """The weights a sharded checkpoint holds, as the LM names them (DCP's own converter to one torch file)."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    target = checkpoint.parent / f"{checkpoint.name}.pt"
    dcp_to_torch_save(str(checkpoint / "sharded"), str(target))
    state = torch.load(target, weights_only=True)["model"]
    return {key.removeprefix("model."): value for key, value in state.items() if key != "model.lm_head.weight"}


def shard_layout(directory):
    """The files DCP wrote, and for every tensor the set of files holding its chunks."""
    from torch.distributed.checkpoint import FileSystemReader

    storage = FileSystemReader(str(directory)).read_metadata().storage_data
    chunks: dict[str, set] = {}
    for index, info in storage.items():
        chunks.setdefault(index.fqn, set()).add(info.relative_path)
    return {p.name for p in directory.glob("*.distcp")}, chunks


def test_a_one_process_checkpoint_resumes_sharded_on_two(work):
    two, one = configs(work, False, "fsdp_1to2")
    out, single = work / "out" / "fsdp_1to2", work / "out" / "fsdp_1to2_single"
    assert sft_in_process(sft_argv(work, one, single)) == 0
    proc = sft_with_fault("kill@update:3", sft_argv(work, one, out))
    assert proc.returncode != 0 and newest_state(out)["step"] == 2
    proc = sharded(work, two, out, "--resume_from_checkpoint", "auto")  # 1 process -> 2 ranks, sharded
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert newest_state(out)["world_size"] == 2
    assert newest_state(out)["loss_history"] == pytest.approx(newest_state(single)["loss_history"], rel=1e-4)
    assert_close(final_weights(out), final_weights(single))


def test_a_one_process_sharded_checkpoint_resumes_on_two_ranks(work):
    """1 -> 2 through DCP: a 1-process --sharding fsdp2 run's checkpoint, resharded over two ranks, goes on as
    the run would have on one."""
    two, one = configs(work, False, "fsdp_dcp_1to2")
    out, single = work / "out" / "fsdp_dcp_1to2", work / "out" / "fsdp_dcp_1to2_single"
    proc = sft_with_fault("term@update:99", sft_argv(work, one, single, "--sharding", "fsdp2"))  # never fires
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = sft_with_fault("kill@update:3", sft_argv(work, one, out, "--sharding", "fsdp2"))
    assert proc.returncode != 0 and newest_state(out)["step"] == 2
    assert (out / "checkpoint-2" / "sharded" / ".metadata").is_file()
    proc = sharded(work, two, out, "--resume_from_checkpoint", "auto")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "resuming from checkpoint-2" in proc.stdout and newest_state(out)["world_size"] == 2
    assert newest_state(out)["loss_history"] == pytest.approx(newest_state(single)["loss_history"], rel=1e-4)
    assert_close(final_weights(out), final_weights(single))


def test_sharded_final_loads_with_plain_transformers_and_exports(work, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    out = straight(work, True)
    base = AutoModelForCausalLM.from_pretrained(str(work / "model"))
    model = PeftModel.from_pretrained(base, str(out / "final"))
    ids = torch.tensor([[5, 6, 7]])
    assert model(input_ids=ids).logits.shape[:2] == (1, 3)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "05_export_model.py"), "--model_path",
                           str(out / "final"), "--output_dir", str(tmp_path / "export")],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert AutoModelForCausalLM.from_pretrained(str(tmp_path / "export"))(input_ids=ids).logits.shape[:2] == (1, 3)


def test_two_nodes_on_one_machine_train_as_two_processes(work):
    """torchrun --nnodes 2 (one process each, a local rendezvous): the same run as 2 processes on one node."""
    two, _ = configs(work, False, "fsdp_nodes")
    out, ref = work / "out" / "fsdp_nodes", straight(work, False)
    port = str(free_port())
    argv = sft_argv(work, two, out, "--sharding", "fsdp2")
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", port,
                               SFT_SCRIPT, *argv], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True)
             for rank in (0, 1)]
    results = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], results[0][1][-2000:] + results[1][1][-2000:]
    assert newest_state(out)["world_size"] == 2
    a, b = final_weights(out), final_weights(ref)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_untied_embedding_and_head_are_sharded_as_units_of_their_own(work):
    """A model whose output head has a weight of its own: embedding and head are units beside the layers; the run
    equals its 1-process twin."""
    from transformers import AutoModelForCausalLM

    untied = work / "model_untied"
    if not untied.exists():
        model = AutoModelForCausalLM.from_pretrained(str(work / "model"), tie_word_embeddings=False)
        model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.detach().clone())
        model.save_pretrained(str(untied))
    two, one = configs(work, False, "fsdp_untied")
    out, single = work / "out" / "fsdp_untied", work / "out" / "fsdp_untied_single"
    proc = sft_with_fault("term@update:99", sft_argv(work, two, out, "--sharding", "fsdp2", model=untied),
                          launcher=torchrun())
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sft_in_process(sft_argv(work, one, single, model=untied)) == 0
    a, b = final_weights(out), final_weights(single)
    assert "lm_head.weight" in a  # saved once, as its own weight
    assert_close(a, b)


def test_on_the_cuda_path_a_bf16_sharded_run_gathers_in_bf16_and_reduces_in_fp32(work, monkeypatch):
    """The CUDA path (emulated on the CPU): FSDP2 under bf16 gathers the weights in bf16 and reduces gradients in
    fp32 (MixedPrecisionPolicy), with the stand-in varlen kernel in every layer, and the plan says so; its losses
    stay within bf16 tolerance of the same run gathered in fp32 on the CPU path. The fp32 master shards and the
    checkpoint are float32 either way."""
    import utils.model.kernels as kernels

    config = sft_config(work, "fsdp_bf16_gather", lora=False, bf16=True, max_steps=4, eval_steps=0, save_steps=0,
                        gradient_accumulation_steps=1)
    runs = {}
    for emulated in (True, False):
        if emulated:
            monkeypatch.setenv(kernels.EMULATE_ENV, "1")
        else:
            monkeypatch.delenv(kernels.EMULATE_ENV, raising=False)
        out = work / "out" / f"fsdp_bf16_{'cuda' if emulated else 'cpu'}"
        proc = sharded(work, config, out)
        assert proc.returncode == 0, proc.stderr[-3000:]
        runs[emulated] = (proc.stdout, newest_state(out)["loss_history"], final_weights(out))
    plan, losses, weights = runs[True]
    assert "weights gathered in bf16, gradients reduced in fp32 (MixedPrecisionPolicy)" in plan, plan
    assert "emulated on the CPU" in plan and "AdamW, fused" in plan  # fused on FSDP2's DTensor shards too
    assert "weights gathered and gradients reduced in fp32" in runs[False][0]
    assert losses == pytest.approx(runs[False][1], rel=2e-2) and losses != runs[False][1]
    assert all(w.dtype == torch.float32 for w in weights.values())


def test_the_checkpoint_bench_measures_both_layouts_on_every_rank(tmp_path):
    report, results = tmp_path / "BENCH.md", tmp_path / "results.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "benchmark_checkpoint.py"), "--ranks", "2",
                           "--hidden", "64", "--layers", "2", "--report", str(report), "--json", str(results)],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads(results.read_text())
    assert sorted((r["layout"], r["rank"]) for r in rows) == [("gathered", 0), ("gathered", 1), ("sharded", 0),
                                                              ("sharded", 1)]
    largest = {r["layout"]: r["largest_file_mib"] for r in rows}
    assert largest["sharded"] < largest["gathered"]  # no shard file holds the whole state
    assert "<!-- checkpoint:begin" in report.read_text() and "DCP vs gathered" in report.read_text()
