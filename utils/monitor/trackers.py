"""Where training metrics go: metrics.jsonl always, plus the trackers of ``training_params.report_to``
(TensorBoard by default; wandb, mlflow, trackio when installed), all through accelerate's tracker API."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from accelerate.tracking import LOGGER_TYPE_TO_CLASS, GeneralTracker, TensorBoardTracker, on_main_process

from utils.common.errors import UserError
from utils.common.publish import write_text_atomic

TRACKERS = ("tensorboard", "wandb", "mlflow", "trackio")
"""Names ``report_to`` accepts (the transformers convention)."""
PROJECT = "sft-pipeline"
"""The project (wandb, trackio) or experiment (mlflow) every run logs to; a run is named after its directory."""
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def check_trackers(names: list[str]) -> None:
    """Refuse, before anything is written, a tracker that is named but not installed."""
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"training_params.report_to: unknown tracker {name!r}; choose from {', '.join(TRACKERS)}")
        if importlib.util.find_spec(_PACKAGES[name]) is None:
            raise UserError(f"training_params.report_to: {name} is not installed; `.venv/bin/pip install "
                            f"{_PACKAGES[name]}`, or remove {name!r} from report_to")


class JsonlTracker(GeneralTracker):
    """metrics.jsonl: one JSON object per record, ``step`` included; the file the plots and the studio read."""

    name = "jsonl"
    requires_logging_directory = True
    main_process_only = True

    def __init__(self, output_dir: Path):
        super().__init__()
        self.path = Path(output_dir) / "metrics.jsonl"
        self.resume_step = 0
        self.handle = None

    @property
    def tracker(self):
        return self.handle

    @on_main_process
    def start(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(self.resume_step)
        self.handle = open(self.path, "a", encoding="utf-8")

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records the interrupted run wrote after its last checkpoint."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _step_of(line) <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    @on_main_process
    def log(self, values: dict, step: int | None = None, **kwargs):
        self.handle.write(json.dumps({"step": step or 0, **values}, sort_keys=True) + "\n")
        self.handle.flush()

    @on_main_process
    def finish(self):
        if self.handle is not None:
            self.handle.close()


def make_trackers(names: list[str], output_dir: Path, run_name: str) -> list[GeneralTracker]:
    """The trackers of ``names`` (checked installed), metrics.jsonl first; TensorBoard writes output_dir/tensorboard."""
    check_trackers(names)
    trackers: list[GeneralTracker] = [JsonlTracker(output_dir)]
    for name in dict.fromkeys(names):
        if name == "tensorboard":
            trackers.append(TensorBoardTracker("tensorboard", str(output_dir)))
        elif name == "mlflow":
            trackers.append(LOGGER_TYPE_TO_CLASS[name](PROJECT, run_name=run_name))
        else:  # wandb, trackio: a project of this pipeline, a run named after the output directory
            trackers.append(LOGGER_TYPE_TO_CLASS[name](PROJECT, name=run_name))
    return trackers


class RunLogger:
    """What the training loop logs to: ``log(record)`` with a ``step`` key; trackers started at ``resume_step``."""

    def __init__(self, accelerator, resume_step: int, config: dict | None = None):
        self.accelerator = accelerator
        for tracker in accelerator.log_with:
            if isinstance(tracker, JsonlTracker):
                tracker.resume_step = resume_step
            elif isinstance(tracker, TensorBoardTracker):
                tracker.init_kwargs["purge_step"] = resume_step or None
        accelerator.init_trackers(PROJECT)
        if accelerator.is_main_process and config:
            flat = _flatten(config)
            for tracker in accelerator.trackers:
                if tracker.name not in ("jsonl", "tensorboard"):  # those two keep the config beside the run already
                    tracker.store_init_configuration(flat)

    def log(self, record: dict) -> None:
        values = {k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float))}
        self.accelerator.log(values, step=int(record.get("step", 0)))

    def close(self) -> None:
        # not accelerator.end_training(): that also tears down the process group the stage still uses
        for tracker in self.accelerator.trackers:
            tracker.finish()
        self.accelerator.trackers.clear()


def _flatten(config: dict, prefix: str = "") -> dict:
    """Nested config -> {"a.b": scalar}, lists as strings: what trackers take as hyperparameters."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return out


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62
