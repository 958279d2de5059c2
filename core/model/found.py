"""What one graph file (traced inputs, pnnx's graph, the ncnn graph) shows about an encoder's hyperparameters."""
from __future__ import annotations

from dataclasses import dataclass, field

Value = int | tuple[int, ...]  # as core.model.spec.Value (not imported: spec refers to Found)


@dataclass
class Found:
    """Values read from one graph file, where each was read, problems, and facts later checks use
    (``notes``: left context per stack, chunk + right context, ...)."""

    values: dict[str, Value] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)

    def put(self, name: str, value: Value, where: str) -> None:
        self.values[name] = value
        self.where[name] = where
