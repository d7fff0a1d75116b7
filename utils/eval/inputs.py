"""Resolving an evaluation request: which tokenizer, template, data and settings (models load in models.py).

Every value is resolved once, with where it came from (a flag, the data manifest, the model's
``training_summary.json``, or a default), printed at start-up and saved in the report.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from utils.common.config import from_dict, load_config, load_eval_prompts, read_json
from utils.common.errors import UserError
from utils.common.locks import recover_published
from utils.data.chat_jinja import CHAT_TEMPLATE_FILE, trained_chat_template
from utils.data.fingerprint import tokenizer_fingerprint
from utils.data.shards import verify_data_dir
from utils.data.templates import get_template, model_type_for
from utils.data.text_sources import JSONL_SUFFIXES, TextSource, iter_documents
from utils.data.tokenizer import hf_dir_for, load_tokenizer
from utils.eval.evaluation import EvalInputs, prompt_conversations, read_eval_set, retention_store
from utils.eval.models import SUMMARY, check_model_tokenizer, has_tokenizer, read_summary
from utils.eval.request import EvalRequest
from utils.eval.tool_calls import tool_call_items
from utils.model.modeling import check_model_files, not_a_model_dir
from utils.monitor.run_plan import RunPlan
from utils.parallel.accelerator import fast_bf16_available
from utils.sampling.example_store import ExampleStore, load_sft_store
from utils.train.config import EvaluationConfig, SFTTrainingConfig


def _tokenizer(args: EvalRequest, plan: RunPlan):
    recover_published(args.model_path)
    if Path(args.model_path).is_file() and Path(args.model_path).suffix != ".gguf":
        raise UserError(not_a_model_dir(args.model_path))
    check_model_files(Path(args.model_path), args.model_path)  # the model's files first, then its tokenizer's
    if args.tokenizer_path:
        path, origin = args.tokenizer_path, "--tokenizer_path"
    elif not Path(args.model_path).exists():
        raise UserError(f"{args.model_path}: model not found; train one first (e.g. `make sft-train-tiny`) "
                        "or pass the final/ directory of an SFT run to --model_path")
    elif has_tokenizer(Path(args.model_path)):
        path, origin = args.model_path, "the model directory"
    else:
        raise UserError(f"{args.model_path}: holds no tokenizer files (no tokenizer.json, tokenizer_config.json or "
                        "tokenizer.model); pass --tokenizer_path the tokenizer the model was trained with")
    tokenizer = load_tokenizer(path)
    fingerprint = tokenizer_fingerprint(hf_dir_for(path))
    trained = _as_trained(Path(path), fingerprint, tokenizer) if origin == "the model directory" else None
    if trained:
        plan.add("tokenizer", f"{path} (sha256 {trained[:12]} as trained: final/ carries the trained chat template)",
                 origin)
        return tokenizer, trained, str(path)
    plan.add("tokenizer", f"{path} (sha256 {fingerprint[:12]})", origin)
    return tokenizer, fingerprint, str(path)


def _as_trained(model_dir: Path, fingerprint: str, tokenizer) -> str | None:
    """The training tokenizer's fingerprint (training_summary.json), for an SFT run's final/ whose tokenizer differs
    from it by the trained chat template alone: the run wrote its project template over the tokenizer's own
    (utils/data/chat_jinja.py), while the data was prepared with the tokenizer before that. None otherwise."""
    summary = read_summary(model_dir)
    recorded, name = summary.get("tokenizer_sha256"), (summary.get("template") or {}).get("name")
    written = model_dir / CHAT_TEMPLATE_FILE
    if not recorded or recorded == fingerprint or name in (None, "tokenizer") or not written.is_file():
        return None
    trained = trained_chat_template(get_template(name, tokenizer, model_type_for(model_dir)))
    return recorded if written.read_text(encoding="utf-8") == trained else None


def _check_base(path: str | None, fingerprint: str, tokenizer_path: str) -> None:
    """Fail before minutes of work on the tuned model, not after."""
    if path is None:
        return
    if Path(path).exists():
        check_model_tokenizer(path, fingerprint, tokenizer_path)
    elif path.startswith(("/", ".", "checkpoints", "data")):
        raise UserError(f"--base_model_path {path}: not found; pre-train one first (e.g. `make pretrain-tiny`) "
                        "or pass the base model's directory")


def _val_stores(dirs: list[str], fingerprint: str, plan: RunPlan) -> tuple[list[ExampleStore], list[dict]]:
    stores, manifests = [], []
    for raw in dirs:
        manifest = verify_data_dir(raw, fingerprint)
        val = load_sft_store(Path(raw), "val", manifest)
        manifests.append(manifest)
        stores += [s for s in val.by_source() if len(s)]
        plan.add(f"validation {Path(raw).name}", f"{len(val):,} examples", f"{raw}/manifest.json")
    names = [s.name for s in stores]
    if len(set(names)) != len(names):
        raise UserError(f"--data_dirs: two directories share a name ({names}); names identify sources")
    return stores, manifests


def _template_name(args: EvalRequest, manifests: list[dict], summary: dict) -> tuple[str, str]:
    """The prompts' template: the first data dir's (the validation loss reads each dir's tokens as prepared), else
    --template, else the model's, else chatml."""
    names = [m["template"]["name"] for m in manifests if isinstance(m.get("template"), dict)]
    if names:
        return names[0], "data manifest" + (" of the first --data_dirs entry" if len(set(names)) > 1 else "")
    if args.template:
        return args.template, "--template"
    trained = summary.get("template")
    if isinstance(trained, dict) and trained.get("name"):
        return trained["name"], f"{SUMMARY} of the model"
    return "chatml", "default"


def _eval_config(args: EvalRequest, summary: dict) -> tuple[EvaluationConfig, str]:
    if args.config:
        return load_config(args.config, "sft_training", SFTTrainingConfig).evaluation_config, "--config"
    saved = summary.get("config", {}).get("evaluation_config") if isinstance(summary.get("config"), dict) else None
    if isinstance(saved, dict):
        return from_dict(EvaluationConfig, saved, "evaluation_config."), f"{SUMMARY} of the model"
    return EvaluationConfig(), "defaults"


def _retention_window(args: EvalRequest, summary: dict) -> tuple[int, str]:
    """The pre-training sequence length of the models (both see the same windows), else the model's context."""
    if args.retention_window:
        return args.retention_window, "--retention_window"
    candidates = [d for d in (args.base_model_path, summary.get("model_path"), args.model_path) if d]
    for d in candidates:
        length = read_summary(d).get("config", {}).get("data", {}).get("sequence_length")
        if isinstance(length, int) and length > 0:
            return length, f"{d}/{SUMMARY}"
    for d in candidates:
        config = Path(d) / "config.json"
        if config.is_file():
            positions = read_json(config).get("max_position_embeddings") or 1024
            return min(int(positions), 1024), f"{config} (max_position_embeddings, at most 1024)"
    return 512, "default"


def _retention(args: EvalRequest, tokenizer, summary: dict, plan: RunPlan) -> ExampleStore | None:
    if not args.retention_corpus:
        plan.add("retention corpus", "(none: no retention perplexity)", "--retention_corpus")
        return None
    paths = list(args.retention_corpus)
    kind = "jsonl" if all(p.endswith(JSONL_SUFFIXES) for p in paths) else "text_files"
    source = TextSource(type=kind, name="--retention_corpus", paths=paths, fields=[args.retention_field])
    window, origin = _retention_window(args, summary)
    store = retention_store(iter_documents(source), tokenizer, args.retention_max_tokens, window)
    plan.add("retention corpus", f"{', '.join(paths)}: {len(store)} windows of {int(store.lengths[0])} tokens",
             f"--retention_max_tokens {args.retention_max_tokens}; window from {origin}")
    return store


def resolve_inputs(args: EvalRequest) -> tuple[EvalInputs, RunPlan]:
    """Tokenizer, template, validation shards, eval set, prompts and retention windows, with their origins."""
    plan = RunPlan()
    summary = read_summary(args.model_path)
    plan.add("model", args.model_path, "--model_path")
    plan.add("base model", args.base_model_path or "(none: no side by side)", "--base_model_path")
    tokenizer, fingerprint, tokenizer_path = _tokenizer(args, plan)
    _check_base(args.base_model_path, fingerprint, tokenizer_path)
    dirs, dirs_from = (args.data_dirs, "--data_dirs") if args.data_dirs else (summary.get("data_dirs") or [], SUMMARY)
    if not args.data_dirs and not all(Path(d).is_dir() for d in dirs):
        dirs = []
    stores, manifests = _val_stores(dirs, fingerprint, plan) if dirs else ([], [])
    plan.add("data dirs", ", ".join(dirs) or "(none: no validation loss)", dirs_from if dirs else "--data_dirs")
    name, name_from = _template_name(args, manifests, summary)
    template = get_template(name, tokenizer, model_type_for(hf_dir_for(tokenizer_path)))
    plan.add("template", f"{name} (stop ids {template.stop_token_ids})", name_from)
    tool_items = tool_call_items(stores, tokenizer, template.stop_token_ids, args.max_eval_examples)
    if stores:
        plan.add("tool-call turns", f"{len(tool_items)} held-out assistant turns that call tools",
                 "val split of the data dirs, --max_eval_examples")
    eval_cfg, cfg_from = _eval_config(args, summary)
    settings = eval_cfg.generation_config
    if args.max_new_tokens:
        settings = dataclasses.replace(settings, max_new_tokens=args.max_new_tokens)
    plan.add("generation", f"max_new_tokens {settings.max_new_tokens}, temperature {settings.temperature}, "
             f"seed {settings.seed}", cfg_from + (" and --max_new_tokens" if args.max_new_tokens else ""))
    items = read_eval_set(args.eval_set, args.max_eval_examples) if args.eval_set else []
    plan.add("eval set", f"{args.eval_set}: {len(items)} prompts, {len({i.task for i in items})} families"
             if items else "(none: no exact match)", "--eval_set, --max_eval_examples")
    rephrased = read_eval_set(args.rephrased_set, args.max_eval_examples) if args.rephrased_set else []
    if rephrased:
        plan.add("rephrased set", f"{args.rephrased_set}: {len(rephrased)} prompts", "--rephrased_set")
    texts, texts_from = ((load_eval_prompts(args.eval_prompts), f"--eval_prompts {args.eval_prompts}")
                         if args.eval_prompts else (eval_cfg.eval_prompts, cfg_from))
    prompts = prompt_conversations(texts, eval_cfg.system_prompt)
    plan.add("eval prompts", len(prompts), texts_from)
    retention = _retention(args, tokenizer, summary, plan)
    precision = args.precision if args.precision != "auto" else ("bf16" if fast_bf16_available() else "fp32")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    plan.add("precision", f"{precision} on {device}", "--precision")
    inputs = EvalInputs(tokenizer, template, settings, stores, items, prompts, retention,
                        batch_size=args.batch_size, batch_tokens=args.eval_batch_tokens, precision=precision,
                        device=device, show_progress=not args.no_progress, tokenizer_path=tokenizer_path,
                        fingerprint=fingerprint, data_dirs=list(dirs), rephrased=rephrased, tool_items=tool_items)
    inputs.positions = _positions(inputs, settings.max_new_tokens)
    return inputs, plan


def _positions(inputs: EvalInputs, new_tokens: int) -> list[tuple[str, int, str]]:
    """What each part of the evaluation needs in token positions, and the flag that changes it."""
    needs = []
    if inputs.val_stores:
        needs.append(("the longest validation example of --data_dirs", max(int(s.lengths.max()) for s in
                      inputs.val_stores), "evaluate on a corpus prepared with output_params.sequence_length within "
                      "the model's limit"))
    if inputs.retention is not None:
        needs.append(("a --retention_corpus window", int(inputs.retention.lengths.max()), "lower --retention_window"))
    if inputs.tool_items:
        longest = max(len(item.prompt_ids) for item in inputs.tool_items)
        needs.append((f"the longest held-out tool-call prompt ({longest} tokens) plus max_new_tokens ({new_tokens})",
                      longest + new_tokens, "lower --max_new_tokens or --max_eval_examples"))
    for flag, conversations in (("--eval_set", [i.messages for i in inputs.items + inputs.rephrased]),
                                ("eval prompts", inputs.prompts)):
        if conversations:
            longest = max(len(inputs.template.encode_prompt(c)) for c in conversations)
            needs.append((f"the longest {flag} prompt ({longest} tokens) plus max_new_tokens ({new_tokens})",
                          longest + new_tokens, "lower --max_new_tokens or shorten those prompts"))
    return needs
