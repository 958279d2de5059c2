"""Turn tool output lines into progress: which stage of a known sequence a step reached."""
from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass
class StageParser:
    """Matches lines against an ordered list of (regex, note); progress = stages passed / all."""

    stages: tuple[tuple[re.Pattern, str], ...]
    reached: int = 0

    @property
    def total(self) -> int:
        return len(self.stages)

    def feed(self, line: str) -> tuple[int, str] | None:
        for i in range(self.reached, len(self.stages)):
            pattern, note = self.stages[i]
            if pattern.search(line):
                self.reached = i + 1
                return self.reached, note
        return None


def _stages(*pairs: tuple[str, str]) -> tuple[tuple[re.Pattern, str], ...]:
    return tuple((re.compile(p), note) for p, note in pairs)


def export_parser() -> StageParser:
    """icefall's export-for-ncnn.py log lines (icefall-export.md §1.2)."""
    return StageParser(_stages(
        (r"About to create model", "creating the model"),
        (r"Loading checkpoint from|averaging \[|Calculating the averaged model", "loading the checkpoint"),
        (r"Exporting encoder", "tracing the encoder"),
        (r"Saved to .*encoder_jit_trace-pnnx\.pt", "encoder saved"),
        (r"Exporting decoder", "tracing the decoder"),
        (r"Saved to .*decoder_jit_trace-pnnx\.pt", "decoder saved"),
        (r"Exporting joiner", "tracing the joiner"),
        (r"Saved to .*joiner_jit_trace-pnnx\.pt", "joiner saved"),
    ))


def pnnx_parser() -> StageParser:
    """pnnx's pass banners (toolchain.md §1)."""
    pairs = [(rf"#+ pass_level{i}\b", f"pass_level{i}") for i in range(6)]
    pairs.append((r"#+ pass_ncnn\b", "pass_ncnn"))
    return StageParser(_stages(*pairs))


PARSERS = {"export": export_parser, "pnnx": pnnx_parser}
