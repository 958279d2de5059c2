"""The one interface between core and the front-ends: plain dataclass events.

The runner emits these; the TUI turns them into widget updates and the CLI
into progress bars and tables. Neither front-end runs a process or parses a
log line itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StepStarted:
    step: str
    index: int  # 1-based position in the plan
    total: int
    title: str
    command: str | None = None  # the shell form of the command, for process steps
    background: bool = False  # runs beside the steps after it (core.pipeline.runner.Step.background)


@dataclass(frozen=True)
class LogLines:
    step: str
    lines: tuple[str, ...]


@dataclass(frozen=True)
class Progress:
    step: str
    done: float | None  # None: indeterminate
    total: float | None
    note: str = ""


@dataclass(frozen=True)
class StepFinished:
    step: str
    status: str  # "ok", "failed", "cancelled" or "skipped"
    seconds: float
    outputs: tuple[str, ...] = ()
    error: str | None = None
    hint: str | None = None
    tail: tuple[str, ...] = field(default_factory=tuple)  # last log lines, for failures


@dataclass(frozen=True)
class RunFinished:
    status: str  # "ok", "failed" or "cancelled"
    seconds: float
    out_dir: str
    error: str | None = None  # a failure before any step ran (e.g. another run holds the directory)


Event = StepStarted | LogLines | Progress | StepFinished | RunFinished
