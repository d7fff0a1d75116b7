"""One wiring of a training run: start → resume point → data → model → claim the output → plan → restore → fit →
final/. The SFT and pre-training stages, the step profiler and the tests each bring a ``Stage`` (their data and
model builders, their run record); the order, the output lock and the refusals before anything is written are
here, once.

Data, model and the checkpoint named by --resume_from_checkpoint are read before the output directory is claimed,
so inputs that cannot train are refused before anything is written; a stage that caches its data in the output
directory (pre-training's token streams) claims it before the data instead (``claims_output_first``).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from utils.checkpoint.record import RunRecord
from utils.monitor.run_plan import RunPlan
from utils.train.cli import RunInputs
from utils.train.config import TrainingParams
from utils.train.loop import TrainState, fit
from utils.train.output import own_output
from utils.train.resume import Checkpoint, find_checkpoint, restore
from utils.train.run import TrainData, TrainRun, build_run
from utils.train.start import RunStart, start_run


class Stage:
    """What a run brings to the recipe. The builders are called in the recipe's order and may keep what they read
    on the stage for the later ones (the data a plan describes, the template final/ carries)."""

    kind: str | None = None
    """The stage's name ("sft", "pretrain"): it claims the output directory (marked as this kind's), prints its
    plan and writes final/. None: a run of the tests or the bench, which does none of these."""
    label = "training"
    """The progress bar's name."""
    claims_output_first = False
    """Claim the output directory before the data is read (the data is cached there)."""
    on_eval: Callable | None = None
    """After each evaluation (``TrainRun.on_eval``), e.g. the SFT stage's generation samples."""

    def __init__(self, params: TrainingParams, inputs: RunInputs) -> None:
        self.params, self.inputs = params, inputs

    def start(self) -> RunStart:
        """The auto switches resolved, the accelerator, seed and tokenizer (``start.start_run``); the stage trains
        with the resolved params from here on (a stage keeping its whole config puts them in it)."""
        start = start_run(self.params, self.inputs)
        self.params = start.params
        return start

    def check(self, start: RunStart) -> None:
        """Refuse, from the configs alone, what cannot train (before the checkpoint and the data are read)."""

    def data(self, start: RunStart, checkpoint: Checkpoint | None, held: contextlib.ExitStack) -> TrainData:
        """The data the run trains on (locks it must hold while the run reads it entered on ``held``)."""
        raise NotImplementedError

    def model(self, start: RunStart) -> tuple[object, RunRecord]:
        """The model ready to train (``start.ready_to_train``) and the run's record (before the plan)."""
        raise NotImplementedError

    def plan(self) -> RunPlan:
        """The stage's lines of the run plan (the run adds its own: ``run.build_run``)."""
        return RunPlan()

    def restored(self, state: TrainState) -> None:
        """On the main process, once the run knows its start step (e.g. forget what a killed run wrote after it)."""

    def final(self, run: TrainRun, state: TrainState, record: RunRecord) -> Path | None:
        """Write final/ (``run.finish``) with the stage's summary; returns it (None on other ranks)."""
        raise NotImplementedError


@dataclass
class Built:
    """A run put together by ``build``, not yet trained."""

    run: TrainRun
    plan: RunPlan
    record: RunRecord
    """The stage's record without the plan (what final/'s summary holds)."""


@dataclass
class Trained:
    """A run trained by ``train``."""

    run: TrainRun
    state: TrainState
    final: Path | None
    """final/ (None on other ranks, and for a run of kind None)."""


def build(stage: Stage, start: RunStart, checkpoint: Checkpoint | None = None,
          held: contextlib.ExitStack | None = None) -> Built:
    """data → model → claim the output (a stage of a kind, unless claimed first) → plan → the run
    (``run.build_run``), keeping the step split of ``checkpoint``. ``held`` keeps the output lock and the stage's
    locks for as long as the run trains (``train`` closes it at the end); left out, for a run of kind None whose
    builders take no lock (the step profile's)."""
    stage.params.check_resolved()  # by ``Stage.start``
    held = held if held is not None else contextlib.ExitStack()
    claim = stage.kind is not None
    if claim and stage.claims_output_first:
        held.enter_context(own_output(start.accelerator, stage.inputs, stage.kind))
    data = stage.data(start, checkpoint, held)
    model, record = stage.model(start)
    if claim and not stage.claims_output_first:
        held.enter_context(own_output(start.accelerator, stage.inputs, stage.kind))
    plan = stage.plan()
    run = build_run(start, model, data, stage.params, output_dir=Path(stage.inputs.output_dir), record=record,
                    plan=plan, label=stage.label, on_eval=stage.on_eval,
                    resumed=checkpoint.saved if checkpoint else None)
    return Built(run, plan, record)


def train(stage: Stage) -> Trained:
    """The whole run: start → check → resume point → ``build`` → restore → plan printed → fit → final/."""
    start = stage.start()
    main = start.accelerator.is_main_process
    stage.check(start)
    checkpoint = find_checkpoint(stage.inputs.resume_from_checkpoint, Path(stage.inputs.output_dir), main)
    with contextlib.ExitStack() as held:
        built = build(stage, start, checkpoint, held)
        state = restore(built.run, checkpoint)
        if main and stage.kind is not None:
            stage.restored(state)
            print(built.plan.render(), flush=True)
        state = fit(built.run, state)
        final = stage.final(built.run, state, built.record) if stage.kind is not None else None
    return Trained(built.run, state, final)
