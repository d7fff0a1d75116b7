"""The checkpoint contract: a checkpoint's training_state.json (``TrainingState``: where the loop stood, and the
run's record beside it), and the run's record, which final/'s training_summary.json holds too and a resume checks
the checkpoint against.

Three kinds, by what a run knows of itself:

- ``RunRecord``: the tokenizer and data hashes (a synthetic run of the tests or the bench records only these),
  and, set by ``train/run.build_run``, the run plan, the micro-batch split and the auto switches as resolved;
- ``StageRecord``: a training stage's (pre-training / CPT): the resolved config, the CLI overrides, the model path
  and the sha256 of the base weights (null for a new preset);
- ``SFTRecord``: the SFT stage's, with its data dirs, their weights and the chat template.

``to_json`` gives the record as the files hold it (keys sorted, as ``json.dumps(..., sort_keys=True)`` writes
them); ``from_json`` reads it back from a training_state.json (the loop's keys beside it are left to the loop), so
a checkpoint written before this type existed round-trips unchanged. A field marked ``optional`` is left out while
it is None (a record before ``build_run`` has no plan; a synthetic run no config); the others are always written,
null included.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

_OPTIONAL = {"optional": True}


@dataclass(frozen=True, kw_only=True)
class RunRecord:
    """What any run records: the checks a resume makes (tokenizer, data), the plan and the step's split."""

    tokenizer_sha256: str
    """sha256 of the tokenizer files (utils/data/fingerprint.py)."""
    data_hashes: dict | str
    """Every train shard's sha256 per data dir name (or the text streams' key); a resume refuses other data."""
    config: dict | None = field(default=None, metadata=_OPTIONAL)
    """The resolved config as a dict; a resume compares its training_params, lora_config and quantization."""
    plan: dict | None = field(default=None, metadata=_OPTIONAL)
    """The run plan (``RunPlan.as_dict``), set by ``build_run``."""
    micro_batch_split: dict | None = field(default=None, metadata=_OPTIONAL)
    """How each step was split for the device (``fold.choose_split``), kept on resume; set by ``build_run``."""
    resolved_auto: dict | None = field(default=None, metadata=_OPTIONAL)
    """{field: {"value", "why"}} of the training_params switches left at auto and resolved for the machine at run
    start (``start.resolve_auto``; the config holds the resolved values); set by ``build_run``."""

    def to_json(self) -> dict:
        """The record's keys and values as the checkpoint's JSON holds them (sorted keys)."""
        items = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                 if not (f.metadata.get("optional") and getattr(self, f.name) is None)}
        return dict(sorted(items.items()))

    @classmethod
    def from_json(cls, data: dict):
        """The record a training_state.json (or training_summary.json) holds; its other keys are not the record's,
        a key it lacks (a checkpoint from before the field existed) reads as None."""
        return cls(**{f.name: data.get(f.name) for f in dataclasses.fields(cls)})

    def keys(self) -> list[str]:
        """The JSON keys this record writes."""
        return list(self.to_json())


@dataclass(frozen=True, kw_only=True)
class StageRecord(RunRecord):
    """A training stage's record (scripts/01): what it was given and the base it adapts."""

    overrides: dict
    """{field: flag} of the config fields set on the command line."""
    model_path: str | None
    """--model_path (None: a new preset)."""
    base_model_sha256: str | None
    """sha256 of the base weights before LoRA: an adapter resumes only on the same base (None: a new preset)."""


@dataclass(frozen=True, kw_only=True)
class SFTRecord(StageRecord):
    """The SFT stage's record (scripts/03): its corpora, in sampling order, and the chat template they carry."""

    data_dirs: list[str]
    """--data_dirs in the run's order (a resume matches a reordered list by name)."""
    data_weights: list[float]
    """The sampling weight of each data dir."""
    template: dict
    """The first data dir's template (name, stop token ids): samples and final/ use it."""


@dataclass(frozen=True, kw_only=True)
class TrainingState:
    """A checkpoint's training_state.json: where the loop stood after ``step`` (``loop.TrainState.checkpointed``)
    and, in the same JSON object, the run's record. The record's keys are kept as written (``record``) and read as
    the record type of the run that resumes it (``run_record``); a checkpoint from before a field existed reads
    as that field's default."""

    step: int
    tokens_seen: int
    supervised_seen: int
    loss_history: list[float]
    planner: dict
    """The step planner's state after ``step`` (sampler position per source)."""
    last_eval: dict = field(default_factory=dict)
    best_step: int = 0
    """load_best_model_at_end: the saved step with the lowest eval/loss (0: none)."""
    best_eval_loss: float | None = None
    total_steps: int | None = None
    world_size: int | None = None
    """Processes of the run that wrote it (a resume keeps accumulation x processes)."""
    record: dict = field(default_factory=dict)
    """The run's record (``RunRecord.to_json`` of the run's record type)."""

    def run_record(self, kind: type[RunRecord]) -> RunRecord:
        """The run's record read as ``kind`` (the record type of the run resuming it)."""
        return kind.from_json(self.record)

    def to_json(self) -> dict:
        """The file's JSON object: the loop's keys and the record's, sorted."""
        loop = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "record"}
        return dict(sorted({**loop, **self.record}.items()))

    @classmethod
    def from_json(cls, data: dict) -> TrainingState:
        """The state a training_state.json holds; every key that is not the loop's is the record's."""
        loop = {f.name for f in dataclasses.fields(cls)} - {"record"}
        return cls(**{k: v for k, v in data.items() if k in loop},
                   record={k: v for k, v in data.items() if k not in loop})
