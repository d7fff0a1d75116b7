"""``training_params.compile``: every decoder layer through ``torch.compile`` (inductor), attention left eager.

Each decoder layer is compiled on its own (``Module.compile``), as torchtitan does, so FSDP2 can still shard
layer by layer and a graph stays the size of one block. Packed attention is kept out of the graphs
(``packed_sdpa_attention`` is ``torch.compiler.disable``d): it reads the example bounds on the host, which a
graph cannot, and its kernels are already fused; each layer therefore compiles as two graphs, the part before
attention and the part after. Packed rows change length with every micro-batch: the first compile is for the
first length, the next length recompiles once with the length dynamic, and no later length compiles again
(``torch._dynamo``'s automatic dynamic shapes). ``CompileStats`` reads dynamo's counters so a run can say how many
graphs it compiled, how often it recompiled and where its graphs broke.
"""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

import torch

from utils.common.errors import UserError


@dataclass
class CompileStats:
    """What dynamo compiled since ``CompileStats.now()``."""

    frames: int = 0
    graphs: int = 0
    breaks: Counter = field(default_factory=Counter)

    @classmethod
    def now(cls) -> "CompileStats":
        from torch._dynamo.utils import counters

        breaks = Counter({_reason(text): n for text, n in counters["graph_break"].items()})
        return cls(counters["frames"]["total"], counters["stats"]["unique_graphs"], breaks)

    def since(self, before: "CompileStats") -> "CompileStats":
        return CompileStats(self.frames - before.frames, self.graphs - before.graphs, self.breaks - before.breaks)

    def describe(self) -> str:
        reasons = "; ".join(f"{n} x {why}" for why, n in self.breaks.most_common()) or "none"
        return f"{self.graphs} graph(s) compiled in {self.frames} frame compile(s), graph breaks: {reasons}"


def _reason(text: str) -> str:
    """The first line of dynamo's graph-break message, and the function it broke at when it names one."""
    first = text.strip().splitlines()[0] if text.strip() else "?"
    named = re.search(r"<function ([\w.]+) at", text)
    return f"{first} ({named.group(1)})" if named else first


def compile_layers(layers: list[torch.nn.Module]) -> None:
    """Compile every module of ``layers`` in place (inductor; shapes made dynamic on the first recompile)."""
    if not layers:
        raise UserError("training_params.compile: found no decoder layers to compile in this model (its "
                        "_no_split_modules name none of its modules); set compile to false")
    for layer in layers:
        layer.compile()
