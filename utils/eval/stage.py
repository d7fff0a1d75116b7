"""The evaluation stage: ``run_eval(request)`` measures a fine-tuned model, and its base beside it, on the same
inputs, and publishes the report into ``request.output_dir`` (replaced as a whole, atomically, under the output
lock, and only over a directory an earlier evaluation made)."""
from __future__ import annotations

import gc
import time
from dataclasses import asdict
from pathlib import Path

from utils.common.locks import exclusive
from utils.common.publish import atomic_dir, check_owner, refuse_inside
from utils.eval.evaluation import EvalInputs, ModelEval, evaluate_model
from utils.eval.models import check_lengths, load_eval_model
from utils.eval.report import build_report, render_table, write_report
from utils.eval.request import EvalRequest
from utils.eval.inputs import resolve_inputs
from utils.model.modeling import model_config


def run_eval(request: EvalRequest) -> dict:
    """Resolve the inputs, evaluate the tuned (and base) model, write the report; returns the JSON report."""
    start = time.perf_counter()
    output_dir = Path(request.output_dir)
    refuse_inside(output_dir, {"--model_path": request.model_path, "--base_model_path": request.base_model_path})
    with exclusive(output_dir):
        check_owner(output_dir, "eval")  # before minutes of evaluation, not after
        return _run(request, output_dir, start)


def _run(request: EvalRequest, output_dir: Path, start: float) -> dict:
    inputs, plan = resolve_inputs(request)
    print(plan.render(), flush=True)
    for path in filter(None, (request.model_path, request.base_model_path)):  # both, before minutes on the first
        check_lengths(model_config(path, request.trust_remote_code), path, inputs.positions)
    tuned = _evaluate(request.model_path, inputs, request, "tuned")
    base = _evaluate(request.base_model_path, inputs, request, "base") if request.base_model_path else None
    report = build_report(plan.as_dict(), _settings(request, inputs), tuned, base, _paths(request, inputs),
                          time.perf_counter() - start)
    with atomic_dir(output_dir, kind="eval") as tmp:
        files = write_report(tmp, report, tuned, base)
    print(render_table(report))
    print(f"wrote {', '.join(files)} to {output_dir} in {time.perf_counter() - start:.1f} s")
    return report


def _evaluate(path: str, inputs: EvalInputs, request: EvalRequest, label: str) -> ModelEval:
    print(f"evaluating {label} model {path}", flush=True)
    model = load_eval_model(path, inputs.tokenizer, inputs.fingerprint, inputs.tokenizer_path, inputs.device,
                            request.trust_remote_code, inputs.positions)
    result = evaluate_model(model, inputs)
    del model
    gc.collect()  # one model in memory at a time
    return result


def _settings(request: EvalRequest, inputs: EvalInputs) -> dict:
    """The report's "settings": what the measurements were taken with."""
    return {"generation": asdict(inputs.settings), "batch_size": inputs.batch_size,
            "eval_batch_tokens": inputs.batch_tokens, "precision": inputs.precision, "device": inputs.device,
            "template": inputs.template.name, "tokenizer_sha256": inputs.fingerprint,
            "max_eval_examples": request.max_eval_examples, "retention_max_tokens": request.retention_max_tokens}


def _paths(request: EvalRequest, inputs: EvalInputs) -> dict:
    """The report's top-level paths: which models and data were measured."""
    return {"model_path": request.model_path, "base_model_path": request.base_model_path,
            "tokenizer_path": inputs.tokenizer_path, "data_dirs": inputs.data_dirs, "eval_set": request.eval_set,
            "retention_corpus": request.retention_corpus}
