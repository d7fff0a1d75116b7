"""final/ of an SFT run (save_final): its adapter names the base by Hub id when one is known, says so in one line
when only a path on this disk is, and evaluation and studio still load the base copy that training read."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from test_export import ARCH
from utils.checkpoint.final_model import name_base, save_final
from utils.data.fingerprint import tokenizer_fingerprint
from utils.data.tokenizer import copy_tokenizer_files
from utils.model.loss import SupervisedLoss
from utils.model.modeling import build_model, load_model
from utils.parallel.accelerator import make_accelerator
from utils.parallel.lora import LoraSettings, apply_lora

HUB_ID = "HuggingFaceTB/SmolLM2-135M"  # never reachable here: loading it from the Hub would fail the test
IDS = torch.arange(4, 20)[None]


def _base(path: Path, toy_tokenizer, toy_tokenizer_dir, hub_id: str | None) -> Path:
    """A tiny base on this disk; ``hub_id`` recorded as its config's ``_name_or_path``, as a Hub download saved
    with save_pretrained records it."""
    build_model(ARCH, toy_tokenizer, seed=0).save_pretrained(str(path))
    copy_tokenizer_files(toy_tokenizer_dir, path)
    config = json.loads((path / "config.json").read_text())
    config["_name_or_path"] = hub_id or str(path)
    (path / "config.json").write_text(json.dumps(config))
    return path


def _save_final(base: Path, final: Path, toy_tokenizer_dir) -> torch.nn.Module:
    """save_final as an SFT run calls it, on a LoRA model whose adapter is not zero; returns the model."""
    model = apply_lora(load_model(str(base)), LoraSettings(r=4, lora_alpha=8, lora_dropout=0.0))
    torch.manual_seed(1)
    with torch.no_grad():  # lora_B starts at zero: perturb it, or the adapter would change nothing
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.add_(torch.randn_like(param) * 0.5)
    accelerator = make_accelerator("no")
    wrapped = accelerator.prepare(SupervisedLoss(model))
    extra = {"stage": "sft", "model_path": str(base), "template": {"name": "chatml", "family": "chatml"},
             "tokenizer_sha256": tokenizer_fingerprint(toy_tokenizer_dir)}
    assert save_final(accelerator, wrapped, final, str(toy_tokenizer_dir), extra, merge_adapter=False) == final
    return model.eval()


@pytest.mark.parametrize("known", [True, False], ids=["hub_id_known", "local_only"])
def test_the_adapter_names_its_base_by_hub_id_when_known(tmp_path, toy_tokenizer, toy_tokenizer_dir, capsys,
                                                         known):
    base = _base(tmp_path / "base", toy_tokenizer, toy_tokenizer_dir, HUB_ID if known else None)
    _save_final(base, tmp_path / "final", toy_tokenizer_dir)
    adapter = json.loads((tmp_path / "final" / "adapter_config.json").read_text())
    out = capsys.readouterr().out
    if known:
        assert adapter["base_model_name_or_path"] == HUB_ID
        assert "note:" not in out
    else:
        assert adapter["base_model_name_or_path"] == str(base)  # kept, and said in one line
        notes = [line for line in out.splitlines() if line.startswith("note: final/adapter_config.json")]
        assert len(notes) == 1 and str(base) in notes[0] and "no Hub id known" in notes[0], out
    summary = json.loads((tmp_path / "final" / "training_summary.json").read_text())
    assert summary["model_path"] == str(base)  # the path training read stays recorded


def test_evaluation_and_studio_load_the_base_training_read(tmp_path, toy_tokenizer, toy_tokenizer_dir):
    from peft import PeftModel

    from utils.eval.models import load_eval_model
    from utils.studio.chat import base_of

    base = _base(tmp_path / "base", toy_tokenizer, toy_tokenizer_dir, HUB_ID)
    final = tmp_path / "final"
    trained = _save_final(base, final, toy_tokenizer_dir)
    assert json.loads((final / "adapter_config.json").read_text())["base_model_name_or_path"] == HUB_ID
    assert base_of(final) == str(base)
    merged = load_eval_model(str(final), toy_tokenizer, tokenizer_fingerprint(toy_tokenizer_dir), "toy", "cpu")
    reference = PeftModel.from_pretrained(load_model(str(base)), str(final)).eval()
    with torch.no_grad():
        got, expected, live = merged(input_ids=IDS).logits, reference(input_ids=IDS).logits, trained(input_ids=IDS).logits
        plain = load_model(str(base)).eval()(input_ids=IDS).logits
    assert torch.allclose(got, expected, atol=1e-5) and torch.allclose(got, live, atol=1e-5)
    assert not torch.allclose(got, plain, atol=1e-3)  # the adapter was applied, not the base alone


@pytest.mark.parametrize(("recorded", "model_path", "expected"),
                         [("/disk/base", HUB_ID, HUB_ID), (HUB_ID, None, HUB_ID), ("/disk/base", None, "/disk/base")])
def test_name_base_takes_the_hub_id_from_the_model_path_or_the_config(tmp_path, capsys, recorded, model_path,
                                                                      expected):
    config = tmp_path / "adapter_config.json"
    config.write_text(json.dumps({"base_model_name_or_path": recorded, "r": 4}))
    before = config.read_bytes()
    name_base(config, model_path)
    written = json.loads(config.read_text())
    assert written == {"base_model_name_or_path": expected, "r": 4}
    if expected == recorded:
        assert config.read_bytes() == before  # nothing to change: the file is left as peft wrote it
    assert ("note:" in capsys.readouterr().out) is (expected == "/disk/base")
