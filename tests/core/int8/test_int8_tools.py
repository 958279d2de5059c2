"""The external int8 tools: finding them, their command lines, progress and success judged from output."""
import os
import stat

from core.int8.tools import (find_int8_tools, quantize_tool_argv, quantize_tool_succeeded, table_tool_argv,
                             table_tool_succeeded)
from core.pipeline.progress import PARSERS


def test_tools_are_found_on_path(tmp_path, monkeypatch):
    for name in ("generate-int8-scale-table", "ncnn2int8"):
        p = tmp_path / name
        p.write_text("#!/bin/sh\n")
        p.chmod(p.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("PATH", str(tmp_path) + os.pathsep + os.environ["PATH"])
    tools = find_int8_tools()
    assert tools.complete and tools.table_tool.name == "generate-int8-scale-table"
    monkeypatch.setenv("PATH", "/nonexistent")
    assert not find_int8_tools().complete


def test_command_lines():
    argv = table_tool_argv("gen", ("e.param", "e.bin"), ("d.param", "d.bin"), ("j.param", "j.bin"),
                           "enc.txt", "join.txt", "wavs.txt")
    assert argv == ["gen", "e.param", "e.bin", "d.param", "d.bin", "j.param", "j.bin", "enc.txt", "join.txt", "wavs.txt"]
    assert quantize_tool_argv("q", "a.param", "a.bin", "b.param", "b.bin", "t.txt")[1:] == \
        ["a.param", "a.bin", "b.param", "b.bin", "t.txt"]


def test_table_tool_progress_counts_two_passes_per_file():
    parser = PARSERS["int8-table-tool"]()
    lines = ["num encoder conv layers: 88", "num joiner conv layers: 3", "num files: 2", "Processing a.wav",
             "Processing b.wav", "Processing a.wav", "Processing b.wav", "----------encoder----------",
             "ncnn int8 calibration table create success, best wish ..."]
    hits = [parser.feed(line) for line in lines]
    progress = [h for h in hits if h]
    assert parser.total == 4
    assert [h[0] for h in progress] == [0, 1, 2, 3, 4, 4]
    assert progress[3][1] == "pass 2: a.wav"


def test_success_is_judged_from_output_not_exit_code(tmp_path):
    enc, join = tmp_path / "e.txt", tmp_path / "j.txt"
    assert "success line" in table_tool_succeeded(["Processing x"], enc, join)
    enc.write_text("x 1\n")
    assert "did not write" in table_tool_succeeded(["ncnn int8 calibration table create success"], enc, join)
    join.write_text("")  # success claimed over an empty table: what ncnn2table does on a param with SherpaMetaData
    assert "printed its success line but wrote an empty" in table_tool_succeeded(
        ["ncnn int8 calibration table create success"], enc, join)
    join.write_text("y 1\n")
    assert table_tool_succeeded(["ncnn int8 calibration table create success"], enc, join) is None
    out_p, out_b = tmp_path / "o.param", tmp_path / "o.bin"
    assert "no scale param" in quantize_tool_succeeded(["linear_3 this layer need to be quantized, but no scale param!"],
                                                       out_p, out_b)
    assert "did not write" in quantize_tool_succeeded(["quantize_innerproduct linear_1"], out_p, out_b)
    parser = PARSERS["ncnn2int8"]()
    assert parser.feed("quantize_innerproduct linear_1") == (1, "quantize_innerproduct linear_1")
    assert parser.feed("create_custom_layer SherpaMetaData") is None
