"""The run plan: every derived number of a run with where it came from, printed at start-up and saved."""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class RunPlan:
    """The resolved plan printed at start-up and saved with every checkpoint."""

    lines: list[tuple[str, str, str]] = field(default_factory=list)

    def add(self, name: str, value, origin: str) -> None:
        self.lines.append((name, f"{value:,}" if isinstance(value, int) else str(value), origin))

    def render(self) -> str:
        width = max(len(n) for n, _, _ in self.lines)
        vwidth = max(len(v) for _, v, _ in self.lines)
        rows = [f"  {n:<{width}}  {v:>{vwidth}}   ({o})" for n, v, o in self.lines]
        return "resolved plan:\n" + "\n".join(rows)

    def as_dict(self) -> dict:
        return {n: {"value": v, "from": o} for n, v, o in self.lines}
