"""Metrics as JSON lines and TensorBoard events on the main process; a no-op elsewhere."""
from __future__ import annotations

import json
import math
from pathlib import Path

from utils.common.atomic import write_text_atomic


class MetricsLogger:
    """Appends one JSON object per record to metrics.jsonl and mirrors scalars to TensorBoard."""

    def __init__(self, output_dir: Path, resume_step: int = 0):
        self.path = Path(output_dir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_after(resume_step)
        self.handle = open(self.path, "a", encoding="utf-8")
        # torch costs seconds to import; deferred so callers that skip this stay fast
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(Path(output_dir) / "tensorboard"), purge_step=resume_step or None)

    def _truncate_after(self, step: int) -> None:
        """On resume, drop records the interrupted run wrote after its last checkpoint."""
        if not self.path.exists():
            return
        kept = [line for line in self.path.read_text(encoding="utf-8").splitlines()
                if line.strip() and _step_of(line) <= step]
        write_text_atomic(self.path, "".join(line + "\n" for line in kept))

    def log(self, record: dict) -> None:
        self.handle.write(json.dumps(record, sort_keys=True) + "\n")
        self.handle.flush()
        step = record.get("step", 0)
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)) and math.isfinite(value):
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        self.handle.close()
        self.tb.close()


class NullLogger:
    """What non-main processes log to."""

    def log(self, record: dict) -> None:
        pass

    def close(self) -> None:
        pass


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (ValueError, AttributeError):
        return 1 << 62


def read_metrics(path: Path) -> list[dict]:
    """All records of a metrics.jsonl."""
    return [json.loads(line) for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
