"""The int8 tool stand-ins behave like the real generate-int8-scale-table (sherpa-ncnn 2.1.15) and ncnn2int8.

One test per row of issue 16's table (each fails on the old stand-ins), and the wizard's reading of each
real failure: which file and why, which layer, the SIGFPE of c4193aad's ncnn2int8, current ncnn2int8's
weight-scale lines, ncnn2table's empty table, and the Gemm scale taken from B's first row. The models are
tiny ncnn files written here (read by python ncnn like any other), so every test takes about a second.
"""
import os
import subprocess
import wave

import numpy as np
import pytest

from core.common.hints import hint_for
from core.pipeline.int8_external import complete_table, gemm_clipping, weight_only_lines
from core.int8.tools import (describe_unreadable, quantize_tool_succeeded, table_keys, table_tool_succeeded,
                             unreadable_wavs)
from core.ncnn.bin_layout import record_loads
from tests.int8_tool_standins import install

META = "SherpaMetaData           sherpa_meta_data1        0 0 0=3 1=2 2=32 3=48\n"  # the LSTM demo's line
SUCCESS = "ncnn int8 calibration table create success"


def _tagged(values) -> bytes:
    return b"\0\0\0\0" + np.asarray(values, "<f4").tobytes()


def _raw(values) -> bytes:
    return np.asarray(values, "<f4").tobytes()


def _write(path, layers: list[str], blobs: int) -> None:
    path.write_text(f"7767517\n{len(layers)} {blobs}\n" + "".join(line + "\n" for line in layers))


@pytest.fixture(scope="module")
def nets(tmp_path_factory):
    """encoder (with SherpaMetaData): two chained 1x1 convolutions, a Linear, an LSTM, a Gemm whose first row
    is small; joiner: one Linear. fp32 weights, as pnnx writes them with fp16=0."""
    d = tmp_path_factory.mktemp("nets")
    rng = np.random.RandomState(0)
    enc = [
        "Input                    in0                      0 1 in0",
        META.strip(),
        "Convolution              conv_1                   1 1 in0 1 0=2 1=1 5=1 6=2",
        "Convolution              conv_2                   1 1 1 2 0=2 1=1 5=1 6=4",
        "InnerProduct             linear_3                 1 1 2 3 0=3 1=1 2=6",
        "LSTM                     lstm_4                   1 1 3 4 0=2 1=24 2=0",
        "Gemm                     gemm_5                   1 1 4 5 3=1 4=0 5=1 6=0 8=2 9=2",
    ]
    _write(d / "encoder.param", enc, 6)
    gemm_b = [[0.1, -0.05], [1.0, -2.0]]  # N=2 rows of K=2: ncnn2int8 scales by row 0 (0.1), clipping row 1
    (d / "encoder.bin").write_bytes(
        _tagged(rng.randn(2)) + _raw([0.1, 0.2]) + _tagged(rng.randn(4)) + _raw([0.0, 0.1])
        + _tagged(rng.randn(6)) + _raw([0.1, 0.2, 0.3])
        + _tagged(rng.randn(24)) + _tagged(rng.randn(8)) + _tagged(rng.randn(16)) + _tagged(gemm_b))
    _write(d / "joiner.param", ["Input                    in0                      0 1 in0",
                                "InnerProduct             linear_1                 1 1 in0 1 0=2 1=1 2=4"], 2)
    (d / "joiner.bin").write_bytes(_tagged(rng.randn(4)) + _raw([0.0, 0.1]))
    return d


@pytest.fixture(scope="module")
def bindir(tmp_path_factory):
    return install(tmp_path_factory.mktemp("bin"))


def _run(bindir, tool, *args, mode=""):
    env = dict(os.environ, STANDIN_BREAK=mode)
    p = subprocess.run([str(bindir / tool), *map(str, args)], capture_output=True, text=True, env=env, timeout=120)
    return p.returncode, p.stderr.split("\n")[:-1] if p.stderr.endswith("\n") else p.stderr.split("\n")


def _wav(path, rate=16000, channels=1, seconds=0.2):
    x = (np.sin(np.arange(int(rate * seconds) * channels) * 0.05) * 8000).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(x.tobytes())
    return path


def _table_tool(bindir, nets, tmp_path, listing: str, mode=""):
    (tmp_path / "list.txt").write_text(listing)
    rc, lines = _run(bindir, "generate-int8-scale-table", nets / "encoder.param", nets / "encoder.bin",
                     nets / "joiner.param", nets / "joiner.bin", nets / "joiner.param", nets / "joiner.bin",
                     tmp_path / "enc.txt", tmp_path / "join.txt", tmp_path / "list.txt", mode=mode)
    return rc, lines


# -- generate-int8-scale-table, row by row -----------------------------------------------------------------

def test_it_counts_the_conv_layers_of_each_net(bindir, nets, tmp_path):
    rc, lines = _table_tool(bindir, nets, tmp_path, "")
    assert rc == 0 and lines[:3] == ["num encoder conv layers: 3", "num joiner conv layers: 1", "num files: 0"]


def test_an_unreadable_wav_is_reported_by_the_reader_then_failed_on_both_passes(bindir, nets, tmp_path):
    low, missing = _wav(tmp_path / "8k.wav", rate=8000), tmp_path / "missing.wav"
    rc, lines = _table_tool(bindir, nets, tmp_path, f"{low}\n{missing}\n")
    one_pass = ["Expected sample rate: 16000, actual sample rate: 8000", f"Failed to read {low}",
                "Expected chunk_id RIFF. Given: 0x00000000", "", f"Failed to read {missing}"]
    assert lines[3:3 + 2 * len(one_pass)] == one_pass * 2
    found = unreadable_wavs(lines)  # the wizard names each file once, with the reader's reason
    assert found == [(str(low), "Expected sample rate: 16000, actual sample rate: 8000"),
                     (str(missing), "Expected chunk_id RIFF. Given: 0x00000000")]
    assert describe_unreadable(found).count(str(low)) == 1


def test_a_stereo_wav_is_warned_about_on_every_read(bindir, nets, tmp_path):
    stereo = _wav(tmp_path / "stereo.wav", channels=2)
    rc, lines = _table_tool(bindir, nets, tmp_path, f"{stereo}\n")
    warning = ["Warning: 2 channels are found. We only use the first channel.", "", f"Processing {stereo}"]
    assert lines[3:9] == warning * 2 and unreadable_wavs(lines) == []


def test_no_usable_wav_still_writes_inf_tables_and_claims_success(bindir, nets, tmp_path):
    short = _wav(tmp_path / "short.wav", seconds=0.05)  # readable, but not one chunk: nothing is counted
    rc, lines = _table_tool(bindir, nets, tmp_path, f"{short}\n")
    assert rc == 0 and any(SUCCESS in line for line in lines)
    assert any(line.startswith("conv_1 ") and "scale = inf" in line for line in lines)
    enc = (tmp_path / "enc.txt").read_text().splitlines()
    assert enc[0].startswith("conv_1_param_0 ") and "conv_1 inf " in enc
    problem = table_tool_succeeded(lines, tmp_path / "enc.txt", tmp_path / "join.txt")
    assert "counted no activations for 4 layer(s)" in problem and "conv_1" in problem


def test_a_trailing_blank_line_is_a_file_with_no_name(bindir, nets, tmp_path):
    good = _wav(tmp_path / "a.wav", seconds=0.05)
    rc, lines = _table_tool(bindir, nets, tmp_path, f"{good}\n\n")
    assert "num files: 2" in lines and lines.count("Failed to read ") == 2
    assert unreadable_wavs(lines) == [("", "Expected chunk_id RIFF. Given: 0x00000000")]
    assert "an empty line of the list" in describe_unreadable(unreadable_wavs(lines))


def test_a_param_without_metadata_crashes_the_table_tool(bindir, nets, tmp_path):
    (tmp_path / "plain.param").write_text((nets / "encoder.param").read_text().replace(META, "")
                                          .replace("\n7 6\n", "\n6 6\n"))
    (tmp_path / "list.txt").write_text("")
    rc, lines = _run(bindir, "generate-int8-scale-table", tmp_path / "plain.param", nets / "encoder.bin",
                     *[nets / "joiner.param", nets / "joiner.bin"] * 2, tmp_path / "e", tmp_path / "j",
                     tmp_path / "list.txt")
    assert rc == -11 and lines[0] == "Unable to create a model from specified model files."
    assert "SherpaMetaData" in hint_for(lines)


def test_ncnn2table_on_a_param_with_metadata_writes_empty_tables_and_success(bindir, nets, tmp_path):
    rc, lines = _table_tool(bindir, nets, tmp_path, "", mode="ncnn2table-meta")
    assert rc == 0 and any(SUCCESS in line for line in lines)
    assert (tmp_path / "enc.txt").read_text() == ""
    problem = table_tool_succeeded(lines, tmp_path / "enc.txt", tmp_path / "join.txt")
    assert "empty" in problem and "ncnn2table" in problem and "without the SherpaMetaData line" in problem
    assert "never feeds it one" in hint_for(lines)


# -- ncnn2int8 ------------------------------------------------------------------------------------------------

def _table(tmp_path, text: str):
    path = tmp_path / "table.txt"
    path.write_text(text)
    return path


FULL = ("conv_1_param_0 100 100 \nconv_2_param_0 90 90 \nlinear_3_param_0 50 50 50 \n"
        "conv_1 20 \nconv_2 10 \nlinear_3 30 \n")


def _quantize(bindir, nets, tmp_path, table, mode="", param=None):
    out = tmp_path / "out"
    rc, lines = _run(bindir, "ncnn2int8", param or nets / "encoder.param", nets / "encoder.bin",
                     f"{out}.param", f"{out}.bin", *([table] if table else []), mode=mode)
    return rc, lines, out


def test_ncnn2int8_prints_each_pass_in_its_order(bindir, nets, tmp_path):
    rc, lines, out = _quantize(bindir, nets, tmp_path, _table(tmp_path, FULL))
    assert rc == 0
    assert lines == ["create_custom_layer SherpaMetaData", "quantize_convolution conv_1", "quantize_convolution conv_2",
                     "quantize_innerproduct linear_3", "quantize_lstm lstm_4", "quantize_gemm gemm_5",
                     "fuse_requantize conv_1 conv_2"]
    assert quantize_tool_succeeded(lines, out.with_suffix(".param"), out.with_suffix(".bin")) is None


def test_a_missing_weight_scale_is_not_named_by_ncnn2int8_but_by_the_wizard(bindir, nets, tmp_path):
    table = _table(tmp_path, FULL.replace("conv_2_param_0 90 90 \n", ""))
    rc, lines, out = _quantize(bindir, nets, tmp_path, table)
    assert rc == 0 and "this layer need to be quantized, but no scale param!" in lines
    assert "quantize_innerproduct linear_3" in lines  # only the Convolution pass ended
    problem = quantize_tool_succeeded(lines, out.with_suffix(".param"), out.with_suffix(".bin"),
                                      nets / "encoder.param", table)
    assert "Convolution 'conv_2' first" in problem and "conv_2_param_0" in problem


def test_a_missing_table_file_fails_with_ncnn2int8s_words_and_255(bindir, nets, tmp_path):
    rc, lines, _ = _quantize(bindir, nets, tmp_path, tmp_path / "nowhere.txt")
    assert rc == 255 and lines == [f"Open {tmp_path / 'nowhere.txt'} failed.", "read_int8scale_table failed"]


def test_c4193aad_ncnn2int8_dies_with_sigfpe_and_the_hint_names_the_fixes(bindir, nets, tmp_path):
    rc, lines, _ = _quantize(bindir, nets, tmp_path, _table(tmp_path, FULL), mode="sigfpe")
    assert rc == -8 and lines[-1] == "fuse_requantize conv_1 conv_2"
    hint = hint_for(lines)
    assert "SIGFPE" in hint and "430b3124a" in hint and "cc1673491" in hint and "built-in quantizer" in hint


def test_current_ncnn2int8_leaves_lstms_float_without_weight_lines_and_we_add_them(bindir, nets, tmp_path):
    table = _table(tmp_path, FULL)
    rc, lines, out = _quantize(bindir, nets, tmp_path, table, mode="needs-weight-lines")
    assert rc == 0 and lines[4] == "this layer need to be quantized, but no scale param!"
    lstm = next(line for line in out.with_suffix(".param").read_text().splitlines() if line.startswith("LSTM"))
    assert " 8=2" not in lstm  # left float, exit 0, no layer named
    problem = quantize_tool_succeeded(lines, out.with_suffix(".param"), out.with_suffix(".bin"),
                                      nets / "encoder.param", table)
    assert "LSTM 'lstm_4' first" in problem and "lstm_4_param_0 / lstm_4_param_1" in problem and "3724d10" in problem

    data = (nets / "encoder.bin").read_bytes()
    layers, _ = record_loads(nets / "encoder.param", data)
    completed = _table(tmp_path, complete_table(FULL, layers, data))
    assert {"lstm_4_param_0", "lstm_4_param_1"} <= table_keys(completed.read_text())
    rc, lines, out = _quantize(bindir, nets, tmp_path, completed, mode="needs-weight-lines")
    assert "quantize_lstm lstm_4" in lines and not any("no scale param" in line for line in lines)
    lstm = next(line for line in out.with_suffix(".param").read_text().splitlines() if line.startswith("LSTM"))
    assert " 8=2" in lstm


def test_current_ncnn2int8_refuses_to_run_without_a_table(bindir, nets, tmp_path):
    rc, lines, _ = _quantize(bindir, nets, tmp_path, None, mode="needs-weight-lines")
    assert rc == 255 and lines[-2] == "lstm_4 (LSTM): calibration table is required for static weight quantization"
    assert "3724d10" in hint_for(lines)


def test_weight_only_lines_are_ncnn2tables(nets):
    data = (nets / "encoder.bin").read_bytes()
    layers, _ = record_loads(nets / "encoder.param", data)
    lines = weight_only_lines(layers, data, set())
    assert [line.split()[0] for line in lines] == ["lstm_4_param_0", "lstm_4_param_1"]
    lstm = next(l for l in layers if l.name == "lstm_4")
    xc = np.frombuffer(data[lstm.loads[0].start + 4:lstm.loads[0].end], "<f4").reshape(8, 3)
    assert np.allclose([float(v) for v in lines[0].split()[1:]], 127 / np.abs(xc).max(axis=1), rtol=1e-6)
    assert weight_only_lines(layers, data, {"lstm_4_param_0"})[0].startswith("lstm_4_param_1 ")


def test_the_gemm_scale_from_row_0_is_detected_with_its_figures(bindir, nets, tmp_path):
    rc, lines, out = _quantize(bindir, nets, tmp_path, _table(tmp_path, FULL))
    data = (nets / "encoder.bin").read_bytes()
    fp32, _ = record_loads(nets / "encoder.param", data)
    int8_data = out.with_suffix(".bin").read_bytes()
    int8, _ = record_loads(out.with_suffix(".param"), int8_data)
    warnings = gemm_clipping(fp32, data, int8, int8_data)
    assert len(warnings) == 1 and "gemm_5" in warnings[0]
    assert "by 1270, from its first row only" in warnings[0] and "127/absmax = 63.5" in warnings[0]
    assert "50.0% of its weights are clipped" in warnings[0] and "20.00x" in warnings[0]


def test_the_builtin_quantizer_gemm_scale_is_not_flagged(nets, tmp_path):
    from core.int8.calibrate import read_table
    from core.int8.quantize import quantize
    out = tmp_path / "b"
    quantize(nets / "encoder.param", nets / "encoder.bin", read_table(FULL), out.with_suffix(".param"),
             out.with_suffix(".bin"))
    data = (nets / "encoder.bin").read_bytes()
    fp32, _ = record_loads(nets / "encoder.param", data)
    int8_data = out.with_suffix(".bin").read_bytes()
    int8, _ = record_loads(out.with_suffix(".param"), int8_data)
    assert gemm_clipping(fp32, data, int8, int8_data) == []


def test_a_blank_line_ends_ncnn2int8s_table_so_the_completed_table_has_none(nets):
    data = (nets / "encoder.bin").read_bytes()
    layers, _ = record_loads(nets / "encoder.param", data)
    text = complete_table("conv_1 20 \n\nconv_2 10 \n", layers, data)
    assert "\n\n" not in text and {"conv_1", "conv_2", "lstm_4_param_1"} <= table_keys(text)
    assert table_keys("conv_1 20 \n\nconv_2 10 \n") == {"conv_1"}


# -- the built-in calibration's two-pass histogram is ncnn's ----------------------------------------------------

def test_two_pass_histogram_bins_as_the_real_tool_does():
    from core.int8.calibrate import ExactStats, activation_scale
    rng = np.random.RandomState(1)
    chunks = [rng.randn(300).astype(np.float32) * 3 for _ in range(4)]
    chunks[1][:50] = 0.0  # zeros are not counted
    absmax = max(float(np.abs(c).max()) for c in chunks)
    expected = np.zeros(2048, np.int64)
    for c in chunks:  # generate-int8-scale-table's pass 2, value by value, in float32
        for v in c:
            if v == 0:
                continue
            expected[min(int(np.float32(np.float32(abs(v)) / np.float32(absmax)) * np.float32(2048)), 2047)] += 1
    later = ExactStats()  # the absmax is known only after the file ran
    for c in chunks[:2]:
        later.add(c)
    later.set_absmax(absmax)
    now = ExactStats(absmax)
    for c in chunks[2:]:
        now.add(c)
    later.merge(now)
    assert np.array_equal(later.histogram().astype(np.int64), expected) and later.count == 1150
    a = activation_scale("x", later)
    assert a.absmax == absmax and 0 < a.threshold <= absmax


def test_two_pass_stats_refuse_a_value_beyond_the_first_pass():
    from core.int8.calibrate import CalibrationError, ExactStats
    s = ExactStats(1.0)
    s.add(np.array([2.0], np.float32))
    with pytest.raises(CalibrationError, match="beyond the first pass's absmax"):
        s.flush()


def test_the_histogram_mode_is_checked_in_the_config():
    from core.pipeline.config import ConfigError, config_from_dict
    assert config_from_dict({"arch": "lstm", "calibration": {"histogram": "two-pass"}}).calibration.histogram == \
        "two-pass"
    assert config_from_dict({"arch": "lstm"}).calibration.histogram == "one-pass"
    with pytest.raises(ConfigError, match="calibration.histogram = 'exact' is not one of one-pass, two-pass"):
        config_from_dict({"arch": "lstm", "calibration": {"histogram": "exact"}})
