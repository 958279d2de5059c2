"""The external int8 tools, used when the user has them: sherpa-ncnn's generate-int8-scale-table and ncnn2int8.

No package index ships either, so the built-in calibrator and quantizer are the
default. When the tools are found (on PATH or configured), their command lines
are built here; their exit codes are not trusted (generate-int8-scale-table
returns 0 even when writing fails, ncnn2int8 ignores its passes' errors), so
success is judged from their output and files (sherpa-ncnn.md §3.1, §3.2).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

TABLE_TOOL = "generate-int8-scale-table"
QUANTIZE_TOOL = "ncnn2int8"
TABLE_SUCCESS = "ncnn int8 calibration table create success"


@dataclass
class Int8Tools:
    table_tool: Path | None
    quantize_tool: Path | None

    @property
    def complete(self) -> bool:
        return self.table_tool is not None and self.quantize_tool is not None


def find_int8_tools(table_tool: str = "", quantize_tool: str = "") -> Int8Tools:
    def locate(configured: str, name: str) -> Path | None:
        found = shutil.which(configured or name)
        return Path(found) if found else None
    return Int8Tools(locate(table_tool, TABLE_TOOL), locate(quantize_tool, QUANTIZE_TOOL))


def table_tool_argv(tool: Path, encoder: tuple[Path, Path], decoder: tuple[Path, Path], joiner: tuple[Path, Path],
                    encoder_table: Path, joiner_table: Path, wav_list: Path) -> list[str]:
    """Its 9 positional arguments; it needs fp32 params that already carry SherpaMetaData."""
    return [str(tool), *map(str, encoder), *map(str, decoder), *map(str, joiner), str(encoder_table),
            str(joiner_table), str(wav_list)]


def quantize_tool_argv(tool: Path, param: Path, binary: Path, out_param: Path, out_bin: Path, table: Path) -> list[str]:
    return [str(tool), str(param), str(binary), str(out_param), str(out_bin), str(table)]


def table_tool_succeeded(log_lines: list[str], encoder_table: Path, joiner_table: Path) -> str | None:
    """None when it worked; otherwise the reason (its exit code is 0 either way)."""
    if not any(TABLE_SUCCESS in line for line in log_lines):
        return f"{TABLE_TOOL} did not print its success line"
    for table in (encoder_table, joiner_table):
        if not table.exists() or table.stat().st_size == 0:
            return f"{TABLE_TOOL} did not write {table}"
    return None


def quantize_tool_succeeded(log_lines: list[str], out_param: Path, out_bin: Path) -> str | None:
    bad = [line for line in log_lines if "need to be quantized, but no scale param" in line]
    if bad:
        return f"{QUANTIZE_TOOL}: {bad[0].strip()}"
    for f in (out_param, out_bin):
        if not f.exists() or f.stat().st_size == 0:
            return f"{QUANTIZE_TOOL} did not write {f}"
    return None
