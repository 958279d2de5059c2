"""Stand-ins for sherpa-ncnn's generate-int8-scale-table and ncnn2int8, for tests only.

No package index ships the real tools and they cannot be built here (see
shared/reference/toolchain.md §3), so, like the demo recipes stand in for
icefall, these behave like the real binaries where the wizard can see it: the
same arguments and usage errors, the same stderr lines (``num files``,
``Processing`` twice per file, the per-layer lines, the success line;
``quantize_innerproduct <layer>``, ``create_custom_layer SherpaMetaData``) and
the same lies (exit code 0 when writing fails). The numbers come from the
built-in calibrator and quantizer. ``STANDIN_BREAK`` makes them misbehave the
way the real ones do: ``no-success`` (exit 0, no tables, no success line),
``no-scale`` (ncnn2int8's "no scale param" complaint, exit 0).
"""
from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def install(directory: Path) -> Path:
    """Write both stand-ins as executables into ``directory`` (to put on PATH); returns it."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, entry in (("generate-int8-scale-table", "table_main"), ("ncnn2int8", "quantize_main")):
        exe = directory / name
        exe.write_text(f"#!{sys.executable}\nimport sys\nsys.path.insert(0, {str(REPO)!r})\n"
                       f"from tests.int8_tool_standins import {entry}\nsys.exit({entry}())\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return directory


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def table_main(argv: list[str] | None = None) -> int:
    from core.calibrate import CalibrationError
    from core.calibration_run import ModelFiles, calibrate, check_wavs

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 9:
        _err(f"Please provide 10 arg. Currently given: {len(args) + 1}")
        _err("Usage: generate-int8-scale-table encoder.param encoder.bin decoder.param decoder.bin joiner.param "
             "joiner.bin encoder-scale-table.txt joiner-scale-table.txt wave_filenames.txt")
        return 1
    files = ModelFiles(*map(Path, args[:6]))
    enc_table, join_table, listing = map(Path, args[6:])
    wavs = [Path(line) for line in listing.read_text().splitlines()]
    _err("num encoder conv layers: -")
    _err("num joiner conv layers: -")
    _err(f"num files: {len(wavs)}")
    usable = check_wavs(wavs, 1).usable
    for wav in wavs:
        if wav not in usable:
            _err(f"Failed to read {wav}")
    for _ in range(2):
        for wav in usable:
            _err(f"Processing {wav}")
    if os.environ.get("STANDIN_BREAK") == "no-success":
        return 0
    try:
        result = calibrate(files, usable, workers=1)
    except CalibrationError as exc:
        _err(str(exc))
        return 0
    for part, table in (("encoder", result.encoder), ("joiner", result.joiner)):
        _err(f"----------{part}----------")
        for a in table.activations.values():
            _err(f"{a.layer:<40} : max = {a.absmax:<15f}  threshold = {a.threshold:<15f}  scale = {a.scale:<15f}")
    enc_table.write_text(result.encoder.text())
    join_table.write_text(result.joiner.text())
    _err("ncnn int8 calibration table create success, best wish for your int8 inference has a low accuracy "
         "loss...\\(^0^)/...233...")
    return 0


def quantize_main(argv: list[str] | None = None) -> int:
    from core.calibrate import CalibrationError, read_table
    from core.quantize import quantize

    args = sys.argv[1:] if argv is None else argv
    if len(args) not in (4, 5):
        _err("usage: ncnn2int8 [inparam] [inbin] [outparam] [outbin] [calibration table]")
        return -1 & 0xFF
    param, binary, out_param, out_bin = map(Path, args[:4])
    if "SherpaMetaData" in param.read_text():
        _err("create_custom_layer SherpaMetaData")
    if os.environ.get("STANDIN_BREAK") == "no-scale":
        _err("linear_1 this layer need to be quantized, but no scale param!")
        return 0
    try:
        table = read_table(Path(args[4]).read_text(), args[4])
        report = quantize(param, binary, table, out_param, out_bin)
    except CalibrationError as exc:
        _err(str(exc))
        return 0
    for name in report.quantized:
        _err(f"quantize_innerproduct {name}")
    return 0
