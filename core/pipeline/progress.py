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


class ScaleTableToolParser:
    """sherpa-ncnn's generate-int8-scale-table: ``num files: N``, then ``Processing <wav>`` twice per file."""

    def __init__(self) -> None:
        self.files = 0
        self.seen = 0

    @property
    def total(self) -> int | None:
        return 2 * self.files if self.files else None

    def feed(self, line: str) -> tuple[int, str] | None:
        m = re.match(r"num files: (\d+)", line)
        if m:
            self.files = int(m.group(1))
            return 0, f"{self.files} files, two passes"
        if line.startswith("Processing "):
            self.seen += 1
            pass_no = 1 if self.files == 0 or self.seen <= self.files else 2
            return self.seen, f"pass {pass_no}: {line[len('Processing '):].strip()}"
        if "create success" in line:
            return self.total or self.seen, "tables written"
        return None


class QuantizeToolParser:
    """ncnn2int8: one ``quantize_<kind> <layer>`` line per quantized layer (no total is known)."""

    total = None

    def __init__(self) -> None:
        self.count = 0

    def feed(self, line: str) -> tuple[int, str] | None:
        if line.startswith("quantize_"):
            self.count += 1
            return self.count, line.strip()
        return None


PARSERS = {"export": export_parser, "pnnx": pnnx_parser, "int8-table-tool": ScaleTableToolParser,
           "ncnn2int8": QuantizeToolParser}
