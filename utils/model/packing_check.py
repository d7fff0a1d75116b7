"""Packed training proven exact for a model's type before a stage writes anything.

A tiny random twin of the model's config (utils/model/twin.py: same attention features, a few thousandth of the
size) trains one step on four examples packed in one row, through the loss and attention the trainer uses,
and the same four examples one at a time through the model's own forward with its own (eager) attention. The
per-example losses, the router's auxiliary loss of an MoE model and every gradient must agree, and so must
generation's paths (an example alone, and in a left-padded batch). A type that disagrees is refused in one
line naming what broke: the layer and its feature (a window, soft-capping, sinks), the layers between
attention calls (MoE routing, recurrent state), or the output head. The verdict is cached per model type,
transformers and torch versions, the twin's config and this code (a JSON file under ~/.cache/sft-pipeline,
written under a lock, so concurrent runs share it); a check costs about a second, once.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from utils.common.config import read_json_dict
from utils.common.errors import UserError, one_line
from utils.common.locks import exclusive
from utils.common.publish import write_json_atomic
from utils.model import attention, attention_eager, loss, twin
from utils.model.attention_eager import UnsupportedAttention

LENGTHS = (9, 4, 13, 7)
"""The examples of the check: three longer than the twin's sliding window (6), one shorter."""
RTOL = 1e-4
CACHE_FILE = "packing-checks.json"
_CHECK_NAME = "packed_varlen_check"
_memo: dict[str, "Verdict"] = {}


@dataclass
class Verdict:
    """What the check of one model type found."""

    model_type: str
    ok: bool
    features: list[str] = field(default_factory=list)
    """The attention features the twin exercised (grouped heads, a sliding window, soft-capping, MoE ...)."""
    problem: str = ""
    """Refused: what broke, in words."""
    seconds: float = 0.0
    cached: str = ""
    """Where the verdict was read from (empty: checked in this process)."""

    def slow_features(self) -> str:
        """The features that send the type's layers through their own eager attention (soft-capping, sinks)."""
        return " and ".join(f for f in self.features if f in ("attention soft-capping", "attention sinks"))

    def describe(self) -> str:
        """The run plan's line."""
        what = ", ".join(self.features) or "plain causal attention"
        how = f"cached in {self.cached}" if self.cached else f"checked now in {self.seconds:.1f} s"
        return f"{self.model_type}: packed == alone (losses, gradients, generation; {what}); {how}"


def check_packing(config, where: str) -> Verdict:
    """The verdict on ``config``'s model type; a refusal is one line naming ``where`` and what broke."""
    verdict = verdict_for(config)
    if not verdict.ok:
        raise UserError(f"{where}: model_type {verdict.model_type!r} cannot train packed: {verdict.problem}; "
                        "this trainer refuses it rather than train it wrong (use another base model)")
    return verdict


def verdict_for(config) -> Verdict:
    """From this process's memory, else the cache file, else a check run now (and cached)."""
    key = cache_key(config)
    if key in _memo:
        return _memo[key]
    path = cache_path()
    saved = read_json_dict(path).get(key)
    if isinstance(saved, dict):
        verdict = Verdict(**{**saved, "cached": str(path)})
    else:
        verdict = run_check(config)
        _write_cache(path, key, verdict)
    _memo[key] = verdict
    return verdict


def cache_path() -> Path:
    """``$SFT_PIPELINE_CACHE``, else ``$XDG_CACHE_HOME/sft-pipeline``, else ``~/.cache/sft-pipeline``."""
    root = os.environ.get("SFT_PIPELINE_CACHE") or Path(
        os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "sft-pipeline"
    return Path(root) / CACHE_FILE


def cache_key(config) -> str:
    """Model type, library versions, this code and the twin's config: what the verdict depends on."""
    import transformers

    code = hashlib.sha256()
    for module in (attention, attention_eager, loss, twin):
        code.update(Path(module.__file__).read_bytes())
    code.update(Path(__file__).read_bytes())
    shape = twin.twin_config(config).to_dict()
    for noise in ("_name_or_path", "transformers_version", "architectures", "dtype", "torch_dtype"):
        shape.pop(noise, None)
    digest = hashlib.sha256(json.dumps(shape, sort_keys=True, default=str).encode()).hexdigest()[:16]
    return (f"{config.model_type}|transformers {transformers.__version__}|torch {torch.__version__}|"
            f"code {code.hexdigest()[:12]}|twin {digest}")


def _write_cache(path: Path, key: str, verdict: Verdict) -> None:
    """Add one verdict under the cache's lock (another run may be adding its own); an unwritable cache only costs
    the check again next time."""
    record = {k: v for k, v in asdict(verdict).items() if k != "cached"}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with exclusive(path, wait=True):
            write_json_atomic(path, {**read_json_dict(path), key: record})
    except (OSError, UserError):
        pass


# ------------------------------------------------------------------------------------------------ the check
def run_check(config) -> Verdict:
    """Build the twin and compare packed with alone (see the module's docstring); never raises."""
    start = time.perf_counter()
    model_type = getattr(config, "model_type", None)
    with torch.random.fork_rng(devices=[]), torch.enable_grad():
        features, problem = _check(config)
    return Verdict(str(model_type), problem is None, features, problem or "", time.perf_counter() - start)


def _check(config) -> tuple[list[str], str | None]:
    try:
        reference = twin.build_twin(config)
    except Exception as err:  # whatever a config the twin cannot shrink raises: refused, saying so
        return [], f"no tiny twin can be built from its config ({one_line(err)[:200]})"
    packed, calls = _packed_twin(reference)
    if packed is None:
        return [], "its attention does not go through transformers' attention interface"
    examples = _examples(config)
    try:
        mine = _packed_step(packed, examples)
    except UnsupportedAttention as err:
        return _features(calls, packed), str(err)
    except Exception as err:  # a forward that fails under packed attention is a refusal, not a crash
        return _features(calls, packed), f"its forward fails with packed attention ({one_line(err)[:200]})"
    if not calls:
        return [], "its attention does not go through transformers' attention interface"
    features = _features(calls, packed)
    theirs = _alone_step(reference, examples, loss.router_of(reference))
    problem = compare(mine, theirs)
    if problem:
        return features, f"{problem}; {_culprit(packed, reference, examples, calls)}"
    return features, _generation(packed, reference, examples)


def _packed_twin(reference):
    """A copy of the twin on a recording ``packed_varlen`` (None: its attention cannot be switched)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    calls: list[tuple[torch.nn.Module, dict, tuple]] = []

    def recording(module, query, key, value, attention_mask, *args, **kwargs):
        calls.append((module, {k: v for k, v in kwargs.items() if k in ("sliding_window", "softcap", "s_aux")},
                      (query.shape[1], key.shape[1])))
        return attention.packed_sdpa_attention(module, query, key, value, attention_mask, *args, **kwargs)

    attention.register()
    AttentionInterface.register(_CHECK_NAME, recording)
    AttentionMaskInterface.register(_CHECK_NAME, attention._packed_mask)
    packed = copy.deepcopy(reference)
    try:
        packed.set_attn_implementation(_CHECK_NAME)
    except (ValueError, AttributeError, NotImplementedError, KeyError):
        return None, calls
    return packed, calls


def _examples(config) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    return [torch.randint(3, twin.VOCAB, (1, n), generator=generator) for n in LENGTHS]


def _targets(ids: torch.Tensor) -> torch.Tensor:
    """Next-token targets with the first two positions unsupervised, as a prompt would be."""
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = ids[:, 1:]
    targets[:, :2] = -100
    return targets


def _packed_step(model, examples) -> dict:
    ids = torch.cat(examples, 1)
    positions = torch.cat([torch.arange(e.shape[1]) for e in examples])[None]
    sources = torch.cat([torch.full((e.shape[1],), i) for i, e in enumerate(examples)])
    targets = torch.cat([_targets(e) for e in examples], 1)[0]
    supervised = torch.nonzero(targets != -100)[:, 0]
    bounds = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
    module = loss.SupervisedLoss(model, num_sources=len(examples))
    objective, parts = module(ids, positions, supervised, targets[supervised], sources[supervised], bounds)
    objective.backward()
    grads = _grads(model)
    return {"losses": parts[:len(examples)], "aux": parts[-1], "grads": grads}


def _alone_step(model, examples, router) -> dict:
    """Each example alone through the model's own forward (eager attention, its own logits and aux_loss)."""
    losses, auxes = [], []
    for ids in examples:
        targets = _targets(ids)
        out = model(input_ids=ids, use_cache=False, **({"output_router_logits": True} if router else {}))
        per_example = F.cross_entropy(out.logits[0].float(), targets[0], ignore_index=-100, reduction="sum")
        objective = per_example
        if router:
            aux = out.aux_loss * int((targets != -100).sum())
            objective = objective + router.coef * aux
            auxes.append(aux.detach())
        objective.backward()
        losses.append(per_example.detach())
    return {"losses": torch.stack(losses), "aux": sum(auxes) if auxes else torch.zeros(()),
            "grads": _grads(model)}


def _grads(model) -> dict:
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)
    return grads


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = RTOL) -> bool:
    scale = float(b.abs().max()) if b.numel() else 0.0
    return a.shape == b.shape and float((a - b).abs().max() if a.numel() else 0.0) <= rtol * scale + 1e-6


def compare(mine: dict, theirs: dict, loss_rtol: float = RTOL, grad_rtol: float = RTOL) -> str | None:
    """What differs between a packed step (``mine``) and the same examples alone (``theirs``), in words; None when
    all agree. Each is ``losses`` (one per example), the router's ``aux`` loss and ``grads`` by weight name; a
    tensor agrees when its largest difference is at most ``rtol`` times the reference's largest magnitude (plus
    1e-6). The GPU bench's varlen check (utils/bench/gpu_model.py) calls it with its autocast dtype's tolerances."""
    if not _close(mine["losses"], theirs["losses"], loss_rtol):
        return (f"the loss of each example packed ({_fmt(mine['losses'])}) differs from alone "
                f"({_fmt(theirs['losses'])})")
    if not _close(mine["aux"], theirs["aux"], loss_rtol):
        return (f"the router's auxiliary loss packed ({float(mine['aux']):.6f}) differs from the model's own "
                f"aux_loss alone ({float(theirs['aux']):.6f})")
    missing = sorted(set(theirs["grads"]) ^ set(mine["grads"]))
    if missing:
        return f"gradients reach different weights packed and alone ({', '.join(missing[:3])})"
    wrong = [n for n in theirs["grads"] if not _close(mine["grads"][n], theirs["grads"][n], grad_rtol)]
    if wrong:
        return f"the gradients of {len(wrong)} weights differ packed and alone (first {wrong[0]})"
    return None


def relative_differences(mine: dict, theirs: dict) -> dict:
    """The figures ``compare`` judges: the largest difference over the reference's largest magnitude, of the
    examples' losses (``loss_rel``) and of the worst weight's gradient (``grad_rel``, that weight ``worst_param``)."""
    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        return float((a - b).abs().max()) / max(float(b.abs().max()), 1e-12)

    grads = {name: rel(mine["grads"][name], g) for name, g in theirs["grads"].items() if name in mine["grads"]}
    worst = max(grads, key=grads.get) if grads else ""
    return {"loss_rel": rel(mine["losses"], theirs["losses"]), "grad_rel": grads.get(worst, float("nan")),
            "worst_param": worst}


def _fmt(values: torch.Tensor) -> str:
    return ", ".join(f"{float(v):.5f}" for v in values)


def _features(calls, model) -> list[str]:
    """The features the twin's attention calls and layers showed, in words."""
    found: dict[str, None] = {}
    for _module, kwargs, (heads, kv_heads) in calls:
        if kv_heads != heads:
            found["grouped heads" if kv_heads > 1 else "multi-query heads"] = None
        if kwargs.get("sliding_window"):
            found["sliding window"] = None
        if kwargs.get("softcap") is not None:
            found["attention soft-capping"] = None
        if kwargs.get("s_aux") is not None:
            found["attention sinks"] = None
    windows = {bool(kwargs.get("sliding_window")) for _module, kwargs, _ in calls}
    if len(windows) > 1:
        found["per-layer window pattern"] = None
    names = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    if names & {"q_norm", "k_norm", "q_layernorm", "k_layernorm"}:
        found["QK-norm"] = None
    if 0 in (getattr(model.config, "no_rope_layers", None) or []):
        found["layers without rotary"] = None
    if getattr(model.config, "final_logit_softcapping", None):
        found["final soft-capping"] = None
    router = loss.router_of(model)
    if router:
        found[f"MoE routing ({router.num_experts} experts, {router.top_k} per token, auxiliary loss)"] = None
    return list(found)


# -------------------------------------------------------------------------------------- what broke, and where
def _culprit(packed, reference, examples, calls) -> str:
    """The first attention layer whose output differs while its input agrees, or the part between them."""
    names = {id(m): n for n, m in packed.named_modules()}
    order = list(dict.fromkeys(names[id(m)] for m, _, _ in calls if id(m) in names))
    kwargs_of = {names.get(id(m)): (k, shapes) for m, k, shapes in calls}
    seen_packed = _layer_io(packed, order, [torch.cat(examples, 1)], examples)
    seen_alone = _layer_io(reference, order, examples, examples)
    for name in order:
        (in_p, out_p), (in_a, out_a) = seen_packed[name], seen_alone[name]
        if not _close(in_p, in_a):
            return f"the layers before {name} (the MLP, MoE routing or a recurrent state) mix packed examples"
        if not _close(out_p, out_a):
            kwargs, (heads, kv) = kwargs_of[name]
            return f"{name} ({_call_features(kwargs, heads, kv)}) differs packed and alone"
    return "every attention layer agrees: the output head or the layers after the last attention differ"


def _layer_io(model, order, inputs, examples) -> dict:
    """Each named attention module's input hidden states and output, over ``inputs`` concatenated."""
    seen: dict[str, list] = {name: [[], []] for name in order}
    modules = dict(model.named_modules())
    packed = len(inputs) == 1 and len(examples) > 1

    def hook(name):
        def record(_module, args, kwargs, output):
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            seen[name][0].append(hidden.detach())
            seen[name][1].append((output[0] if isinstance(output, tuple) else output).detach())
        return record

    handles = [modules[name].register_forward_hook(hook(name), with_kwargs=True) for name in order]
    try:
        with torch.no_grad():
            for ids in inputs:
                if packed:
                    bounds = torch.tensor([0, *torch.tensor(LENGTHS).cumsum(0).tolist()], dtype=torch.int32)
                    positions = torch.cat([torch.arange(e.shape[1]) for e in examples])[None]
                    model.get_decoder()(input_ids=ids, position_ids=positions, use_cache=False,
                                        cu_seq_lens_q=bounds, cu_seq_lens_k=bounds)
                else:
                    model(input_ids=ids, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return {name: (torch.cat(i, 1), torch.cat(o, 1)) for name, (i, o) in seen.items() if i}


def _call_features(kwargs: dict, heads: int, kv_heads: int) -> str:
    parts = [f"sliding window {kwargs['sliding_window']}"] if kwargs.get("sliding_window") else []
    if kwargs.get("softcap") is not None:
        parts.append(f"logit soft-capping {kwargs['softcap']}")
    if kwargs.get("s_aux") is not None:
        parts.append("attention sinks")
    if kv_heads != heads:
        parts.append(f"{heads} query heads over {kv_heads} key/value heads")
    return ", ".join(parts) or "plain causal attention"


def _generation(packed, reference, examples) -> str | None:
    """Generation's paths under packed attention: one example with its mask, and left-padded beside a longer."""
    short, long = examples[1], examples[2]
    with torch.no_grad():
        want_short = reference(input_ids=short, use_cache=False).logits
        want_long = reference(input_ids=long, use_cache=False).logits
        got = packed(input_ids=long, attention_mask=torch.ones_like(long), use_cache=False).logits
        if not _close(got, want_long):
            return "generation: an example alone with its attention mask differs from the model's own attention"
        pad = long.shape[1] - short.shape[1]
        ids = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), short], 1), long])
        mask = torch.cat([torch.cat([torch.zeros(1, pad, dtype=torch.long), torch.ones_like(short)], 1),
                          torch.ones_like(long)])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        got = packed(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    if not (_close(got[0, pad:], want_short[0]) and _close(got[1], want_long[0])):
        return "generation: a left-padded batch differs from each prompt alone"
    return None
