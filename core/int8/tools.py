"""The external int8 tools, used when the user has them: sherpa-ncnn's generate-int8-scale-table and ncnn2int8.

No package index ships either, so the built-in calibrator and quantizer are the
default. When the tools are found (on PATH or configured), their command lines
are built here; their exit codes are not trusted (generate-int8-scale-table
returns 0 even when writing fails, ncnn2int8 ignores its passes' errors), so
success is judged from their output and files (sherpa-ncnn.md §3.1, §3.2).
"""
from __future__ import annotations

import re
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


def unreadable_wavs(log_lines: list[str]) -> list[tuple[str, str]]:
    """(file, the wave reader's reason) for each ``Failed to read X``, once per file in list order.

    The tool reads every file on both passes, so each failure is printed twice; sherpa-ncnn's reader prints
    its reason (``Expected sample rate: 16000, actual sample rate: 8000``, ``Expected chunk_id RIFF...``)
    just before, sometimes followed by a blank line.
    """
    found: dict[str, str] = {}
    reason = ""
    for line in log_lines:
        text = line.rstrip("\r")
        if text.startswith("Failed to read "):
            found.setdefault(text[len("Failed to read "):], reason)
            reason = ""
        elif text.startswith(("Processing ", "num ", "Warning: ")):
            reason = ""
        elif text.strip():
            reason = text.strip()
    return list(found.items())


def describe_unreadable(found: list[tuple[str, str]]) -> str:
    named = [f"{name or 'an empty line of the list'}" + (f" ({why})" if why else "") for name, why in found]
    return (f"{TABLE_TOOL} could not read {'; '.join(named)}; each file must be a 16 kHz PCM (8/16/32-bit) or "
            "32-bit float wav, and the list must have no blank lines")


def table_tool_succeeded(log_lines: list[str], encoder_table: Path, joiner_table: Path) -> str | None:
    """None when it worked; otherwise the reason (its exit code is 0 either way)."""
    if not any(TABLE_SUCCESS in line for line in log_lines):
        return f"{TABLE_TOOL} did not print its success line"
    for table in (encoder_table, joiner_table):
        if not table.exists():
            return f"{TABLE_TOOL} did not write {table}"
        if table.stat().st_size == 0:
            meta = any("SherpaMetaData not exists or registered" in line for line in log_lines)
            return (f"{TABLE_TOOL} printed its success line but wrote an empty {table}"
                    + (": the tool could not create the SherpaMetaData layer" if meta else "")
                    + ". ncnn2table does exactly this when fed a param that carries SherpaMetaData (the wizard "
                    "never feeds it one); if your table tool runs ncnn2table, give it the param without the "
                    "SherpaMetaData line, or use the built-in calibration (calibration.backend = \"builtin\")")
    dead = [line.split(":", 1)[0].strip() for line in log_lines if _INF_SCALE.search(line)]
    if dead:
        return (f"{TABLE_TOOL} counted no activations for {len(dead)} layer(s) (scale = inf, e.g. {dead[0]}): no "
                "calibration wav gave it a whole chunk of 16 kHz audio (it drops a file's last partial chunk); "
                "give longer wavs")
    return None


_INF_SCALE = re.compile(r"\bscale = (inf|nan)\b")
NO_SCALE = "need to be quantized, but no scale param"
# the weight-scale lines current ncnn2int8 (since ncnn 3724d10) wants for its weight-only types: key suffixes
WEIGHT_ONLY_KEYS = {"RNN": 2, "LSTM": 2, "GRU": 2, "Embed": 1, "MultiHeadAttention": 4}
_PASS_ORDER = ("Convolution", "ConvolutionDepthWise", "InnerProduct", "RNN", "LSTM", "GRU", "Embed",
               "MultiHeadAttention")


def table_keys(text: str) -> set[str]:
    """The keys ncnn2int8 reads from a table: each line's first word, up to the first blank line."""
    keys = set()
    for line in text.split("\n"):
        words = line.split()
        if not words:
            break
        keys.add(words[0])
    return keys


def layers_without_scales(model, keys: set[str]) -> list[tuple[str, str, list[str]]]:
    """(layer, type, missing keys) that make ncnn2int8 say 'no scale param', in the order of its passes."""
    found = []
    for kind in _PASS_ORDER:
        for layer in model.layers_of_type(kind):
            if kind in WEIGHT_ONLY_KEYS:
                missing = [f"{layer.name}_param_{i}" for i in range(WEIGHT_ONLY_KEYS[kind])
                           if f"{layer.name}_param_{i}" not in keys]
            else:
                missing = [f"{layer.name}_param_0"] if layer.name in keys and f"{layer.name}_param_0" not in keys \
                    else []
            if missing:
                found.append((layer.name, kind, missing))
    return found


def quantize_tool_succeeded(log_lines: list[str], out_param: Path, out_bin: Path, param: Path | None = None,
                            table: Path | None = None) -> str | None:
    """None when it worked. Its complaint names no layer: the param and the table it read say which one."""
    bad = [line for line in log_lines if NO_SCALE in line]
    if bad:
        return f"{QUANTIZE_TOOL}: {bad[0].strip()}" + _which_layer(param, table)
    for f in (out_param, out_bin):
        if not f.exists() or f.stat().st_size == 0:
            return f"{QUANTIZE_TOOL} did not write {f}"
    return None


def _which_layer(param: Path | None, table: Path | None) -> str:
    from core.ncnn.param import load_param
    if param is None or table is None:
        return ""
    try:
        model = load_param(param).model
        keys = table_keys(table.read_text(encoding="utf-8", errors="replace"))
    except OSError:
        return ""
    missing = layers_without_scales(model, keys) if model else []
    if not missing:
        return ""
    name, kind, keys_missing = missing[0]
    if kind in WEIGHT_ONLY_KEYS:
        return (f" ({kind} {name!r} first: {table} has no {' / '.join(keys_missing)} line. This ncnn2int8 is from "
                f"current ncnn (since 3724d10), which wants ncnn2table's weight-scale lines for "
                f"LSTM/GRU/RNN/Embed/MultiHeadAttention, so it left {name} and every later {kind} in float; add "
                f"the lines (ncnn2table {param.name} <bin> weights.txt writes them; append them to the table) or "
                f"use the built-in quantizer)")
    return (f" ({kind} {name!r} first: {table} has its input scale but no {keys_missing[0]} line, so it and every "
            f"later {kind} stayed float; recalibrate, or drop its '{name}' line to keep it float on purpose)")
