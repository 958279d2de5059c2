"""The built-in quantizer and the int8-layers report write the same bytes as before they were made faster.

The quantize step and the int8-layers report were profiled at the published LSTM size and changed: the layout is
read by ncnn's own layers without ncnn copying the weights (core.int8.layers_loads), the float .bin is mapped
instead of read whole, rounding runs a block of rows at a time, the param is parsed once, and the report reads all
its files in one child process. The outputs must not change by a bit, so:

* ``_int8`` equals the formula it replaced (sign * floor(|x| + 0.5) in float64, clipped) on ties, signed zeros,
  huge and tiny values;
* :func:`record_extents` gives exactly what ncnn reading every weight gives (core.ncnn.bin_layout.record_loads) on
  real pnnx output (fp16 and widened to fp32), on the int8 files the quantizer writes, on an LSTM, on the two rarer
  tags (0x0002C056, a 256-entry table) and on a truncated .bin;
* the int8 .param/.bin (whole model, one layer only, some kept float, no fp16) and int8-layers.json have the
  sha256 the code before the change (commit c9bad3f) gave on the same inputs.

Inputs: the real ConvEmformer export of the icefall kit (Convolution, InnerProduct, Gemm, Conv1D; its decoder's
Embed) and a small hand-written LSTM model. Run: .venv/bin/python -m pytest tests/core/int8/test_quant_bytes.py -q
"""
from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path

import numpy as np
import pytest

from tests.paths import KIT

CE = KIT / "conv-emformer-3layer"
needs_kit = pytest.mark.skipif(not (CE / "encoder_jit_trace-pnnx.ncnn.bin").is_file(),
                               reason="needs the icefall kit (../shared/fixtures/icefall-kit)")
FP16 = struct.pack("<I", 0x01306B47)


# -- inputs (the same helpers produced the golden hashes with the code before the change) ---------------------

def widen_to_fp32(param: Path, binary: Path, out: Path) -> tuple[Path, Path]:
    """A copy of a pnnx fp16 pair with every fp16 blob re-tagged as fp32 (what pnnx writes with fp16=0)."""
    from core.ncnn.bin_layout import record_loads
    data = binary.read_bytes()
    layers, consumed = record_loads(param, data)
    assert consumed == len(data)
    pieces, pos = [], 0
    for layer in layers:
        for ld in layer.loads:
            if ld.type == 0 and data[ld.start:ld.start + 4] == FP16:
                values = np.frombuffer(data, "<f2", count=ld.w, offset=ld.start + 4).astype("<f4")
                pieces += [data[pos:ld.start], struct.pack("<I", 0), values.tobytes()]
                pos = ld.end
    pieces.append(data[pos:])
    out.mkdir(parents=True, exist_ok=True)
    (out / param.name).write_bytes(param.read_bytes())
    (out / binary.name).write_bytes(b"".join(pieces))
    return out / param.name, out / binary.name


def stand_in_table(param: Path, binary: Path):
    """Per-row weight scales from the weights themselves and one input scale for every Convolution/InnerProduct."""
    from core.int8.calibrate import ActivationScale, ScaleTable
    from core.ncnn.bin_layout import record_loads
    data = binary.read_bytes()
    table = ScaleTable()
    for layer in record_loads(param, data)[0]:
        if layer.type not in ("Convolution", "InnerProduct") or not layer.loads:
            continue
        ld = layer.loads[0]
        tag = data[ld.start:ld.start + 4]
        dtype = "<f2" if tag == FP16 else "<f4"
        w = np.frombuffer(data, dtype, count=ld.w, offset=ld.start + 4).astype(np.float64)
        absmax = np.abs(w.reshape(layer.params[0], -1)).max(axis=1)
        table.weights[layer.name] = np.where(absmax > 0, 127.0 / np.where(absmax > 0, absmax, 1), 1).astype(np.float32)
        table.activations[layer.name] = ActivationScale(layer.name, 4.0, 4.0, 127.0 / 4.0)
    return table


def lstm_model(out: Path) -> tuple[Path, Path]:
    """Input -> LSTM with a projection -> bidirectional LSTM -> InnerProduct, random fp32 weights (tag 0)."""
    rng = np.random.default_rng(7)
    i, h, p, h2, o = 24, 32, 16, 8, 10
    lines = ["7767517", "4 4", "Input in0 0 1 in0",
             f"LSTM lstm_0 1 1 in0 1 0={p} 1={4 * h * i} 2=0 3={h}",
             f"LSTM lstm_1 1 1 1 2 0={h2} 1={2 * 4 * h2 * p} 2=2",
             f"InnerProduct linear_0 1 1 2 out0 0={o} 1=1 2={o * 2 * h2}"]

    def tagged(n: int) -> bytes:
        return struct.pack("<I", 0) + rng.normal(0, 0.3, n).astype("<f4").tobytes()
    data = tagged(4 * h * i) + tagged(4 * h) + tagged(4 * h * p) + tagged(h * p)  # xc, bias, hc, hr
    data += tagged(2 * 4 * h2 * p) + tagged(2 * 4 * h2) + tagged(2 * 4 * h2 * h2)
    data += tagged(o * 2 * h2) + rng.normal(0, 0.1, o).astype("<f4").tobytes()  # weight (tagged), bias (raw)
    out.mkdir(parents=True, exist_ok=True)
    (out / "lstm.param").write_text("\n".join(lines) + "\n")
    (out / "lstm.bin").write_bytes(data)
    return out / "lstm.param", out / "lstm.bin"


def cases(tmp: Path) -> dict[str, tuple[Path, Path]]:
    fp32 = widen_to_fp32(CE / "encoder_jit_trace-pnnx.ncnn.param", CE / "encoder_jit_trace-pnnx.ncnn.bin",
                         tmp / "fp32")
    return {"encoder-fp16": (CE / "encoder_jit_trace-pnnx.ncnn.param", CE / "encoder_jit_trace-pnnx.ncnn.bin"),
            "encoder-fp32": fp32,
            "joiner-fp16": (CE / "joiner_jit_trace-pnnx.ncnn.param", CE / "joiner_jit_trace-pnnx.ncnn.bin"),
            "decoder-fp16": (CE / "decoder_jit_trace-pnnx.ncnn.param", CE / "decoder_jit_trace-pnnx.ncnn.bin"),
            "lstm-fp32": lstm_model(tmp / "lstm")}


def _sha(data: bytes) -> str:
    return hashlib.sha256(bytes(data)).hexdigest()[:16]


def quantized_hashes(tmp: Path) -> dict[str, list[str]]:
    """sha256 (first 16 hex digits) of the param and bin each quantizer entry point writes for every case."""
    from core.int8.quantize import Quantizer, quantize
    hashes = {}
    for name, (param, binary) in cases(tmp).items():
        table = stand_in_table(param, binary)
        out_param, out_bin = tmp / f"{name}.int8.param", tmp / f"{name}.int8.bin"
        quantize(param, binary, table, out_param, out_bin)
        hashes[name] = [_sha(out_param.read_bytes()), _sha(out_bin.read_bytes())]
        quantizer = Quantizer(param, binary, table)
        int8_layers = sorted(set(table.activations) | {l.name for l in quantizer.layers
                                                        if l.type in ("Gemm", "LSTM", "Embed")})
        if int8_layers:
            p, b, _ = quantizer.render(only={int8_layers[0]})
            hashes[name] += [_sha(p), _sha(b)]
            p, b, _ = quantizer.render(keep_float=frozenset(int8_layers[1::2]), fp16=False)
            hashes[name] += [_sha(p), _sha(b)]
    return hashes


def report_hash(tmp: Path) -> str:
    """sha256 of the int8-layers.json of the ConvEmformer encoder and joiner: fp32 source, int8 result, fp16 set."""
    from core.int8.quantize import quantize
    from core.int8.report import NetFiles, build_report
    nets = []
    for net in ("encoder", "joiner"):
        fp16 = (CE / f"{net}_jit_trace-pnnx.ncnn.param", CE / f"{net}_jit_trace-pnnx.ncnn.bin")
        fp32 = widen_to_fp32(*fp16, tmp / f"report-{net}")
        out = tmp / "report-int8"
        out.mkdir(exist_ok=True)
        int8 = (out / f"{net}.int8.param", out / f"{net}.int8.bin")
        quantize(*fp32, stand_in_table(*fp32), *int8)
        nets.append(NetFiles(net, *fp32, *int8, *fp16))
    return _sha(json.dumps(build_report(nets), indent=2).encode())


# the code before the change (commit c9bad3f) on the same inputs
GOLDEN = {
    "encoder-fp16": ["f1e2afaea52a8cc6", "8561a31e0b29939b", "bccfb7386c3aa78c",
                     "df0c3d6f3a59e49b", "135206e6b59343c1", "96693de8078789ad"],
    "encoder-fp32": ["f1e2afaea52a8cc6", "8561a31e0b29939b", "bccfb7386c3aa78c",
                     "df0c3d6f3a59e49b", "135206e6b59343c1", "43b26d0e829a2e8b"],
    "joiner-fp16": ["18026c78343b8bbe", "9d34bd8d71b46596", "5dc8c14348ea2448",
                    "5930db2bcbdc7d00", "da2d34050f30d172", "5152480690ae10c7"],
    "decoder-fp16": ["f20f88e262927a19", "e0f388f772aece2f", "f20f88e262927a19",
                     "e0f388f772aece2f", "f20f88e262927a19", "e0f388f772aece2f"],
    "lstm-fp32": ["3a84cc42fa7043db", "966cb647b74d3418", "c59ea88a1cd04e95",
                  "836757fc8deb5e7d", "813483156b0835ca", "c3d0dc4a8925fcc9"],
}
GOLDEN_REPORT = "38ee0caaf156ee30"


# -- the tests ---------------------------------------------------------------------------------------------------

def _int8_before(weights, scales, rows):
    w = weights.reshape(rows, -1).astype(np.float64) * scales.reshape(rows, 1)
    q = np.sign(w) * np.floor(np.abs(w) + 0.5)
    return np.clip(q, -127, 127).astype(np.int8).reshape(-1)


@pytest.mark.parametrize("rows,cols", [(1, 200_000), (3, 70_000), (4096, 24), (97, 1000), (5, 1), (2, 0)])
def test_rounding_is_the_formula_it_replaced(rows, cols):
    from core.int8.quantize import _int8
    rng = np.random.default_rng(rows * 1000 + cols)
    w = rng.normal(0, 1, rows * cols).astype(np.float32)
    special = np.array([0.5, -0.5, 1.5, -2.5, 126.5, -126.5, 0.0, -0.0, 1e30, -1e30, 1e-30,
                        np.nextafter(np.float32(0.5), np.float32(0)), -np.nextafter(np.float32(2.5), np.float32(3))],
                       np.float32)
    if w.size:
        w[::5][:special.size] = special[:w[::5].size]
        w[1::7] = (rng.integers(-600, 600, w[1::7].size) / 4).astype(np.float32)  # exact ties after scaling by 1
    scales = rng.uniform(0.5, 300, rows).astype(np.float32)
    scales[::2] = 1.0
    assert np.array_equal(_int8(w, scales, rows), _int8_before(w, scales, rows))
    assert np.array_equal(_int8(w, scales.astype(np.float64), rows), _int8_before(w, scales.astype(np.float64), rows))


def _extents_equal(param: Path, binary: Path):
    """record_extents (from the bytes, and from the file read only at the tags) == record_loads."""
    from core.int8.layers_loads import BinFile, record_extents
    from core.ncnn.bin_layout import record_loads
    data = binary.read_bytes()
    expected = record_loads(param, data)
    for given in (data, BinFile(binary)):
        got = record_extents(param, given)
        assert got[1] == expected[1] == len(data)
        assert [(l.name, l.type, l.params, l.loads) for l in got[0]] == \
               [(l.name, l.type, l.params, l.loads) for l in expected[0]]


@needs_kit
def test_extents_are_what_ncnn_reads(tmp_path):
    from core.int8.quantize import quantize
    for name, (param, binary) in cases(tmp_path).items():
        _extents_equal(param, binary)
        out_param, out_bin = tmp_path / f"{name}.q.param", tmp_path / f"{name}.q.bin"
        quantize(param, binary, stand_in_table(param, binary), out_param, out_bin)
        _extents_equal(out_param, out_bin)


def test_extents_of_the_rarer_tags_and_a_short_file(tmp_path):
    """0x0002C056 (fp32 with a tag), any other non-zero tag (256 float table + one index byte per value), and int8
    and fp16 blobs whose length is not a multiple of 4 (padded)."""
    from core.int8.layers_loads import record_extents
    from core.ncnn.bin_layout import LayoutError, record_loads
    param = tmp_path / "net.param"
    param.write_text("7767517\n5 5\nInput in0 0 1 in0\nInnerProduct a 1 1 in0 1 0=3 1=1 2=15\n"
                     "InnerProduct b 1 1 1 2 0=2 1=0 2=6\nInnerProduct c 1 1 2 3 0=3 1=1 2=15 8=2\n"
                     "InnerProduct d 1 1 3 out0 0=1 1=0 2=3\n")
    table = np.linspace(-1, 1, 256).astype("<f4").tobytes()
    data = (struct.pack("<I", 0x0002C056) + np.ones(15, "<f4").tobytes() + np.zeros(3, "<f4").tobytes()
            + struct.pack("<I", 0x00010203) + table + bytes(range(6)) + b"\0\0"
            + struct.pack("<I", 0x000D4B38) + bytes(range(15)) + b"\0" + np.zeros(3 + 3 + 1, "<f4").tobytes()
            + FP16 + np.ones(3, "<f2").tobytes() + b"\0\0")
    (tmp_path / "net.bin").write_bytes(data)
    _extents_equal(param, tmp_path / "net.bin")
    loads = [ld for layer in record_extents(param, data)[0] for ld in layer.loads]
    assert [ld.end - ld.start for ld in loads] == [64, 12, 4 + 1024 + 8, 20, 12, 12, 4, 12]
    for short in (data[:-1], data[:20], b""):
        with pytest.raises(LayoutError):
            record_loads(param, short)
        with pytest.raises(LayoutError):
            record_extents(param, short)


@needs_kit
def test_int8_files_are_byte_identical_to_before(tmp_path):
    assert quantized_hashes(tmp_path) == GOLDEN


@needs_kit
def test_int8_layers_json_is_byte_identical_to_before_and_reads_in_one_child(tmp_path, monkeypatch):
    from core.ncnn import child
    started = []
    real = child.run_child
    monkeypatch.setattr(child, "run_child", lambda args, **kw: started.append(args) or real(args, **kw))
    assert report_hash(tmp_path) == GOLDEN_REPORT
    assert len(started) == 1  # six files (float, int8, fp16 of two nets), one child process
    assert len(started[0]) == 12


@needs_kit
def test_report_names_the_file_ncnn_cannot_read(tmp_path):
    from core.int8.report import Int8ReportError, NetFiles, build_report
    param, binary = CE / "joiner_jit_trace-pnnx.ncnn.param", CE / "joiner_jit_trace-pnnx.ncnn.bin"
    short = tmp_path / "short.bin"
    short.write_bytes(binary.read_bytes()[:1000])
    with pytest.raises(Int8ReportError, match="could not read its weights"):
        build_report([NetFiles("joiner", param, binary, param, short)])


def test_unmeasured_sidecar_is_not_checked_against_the_bins(tmp_path, monkeypatch):
    """A sidecar that measured nothing adds nothing to the report: the int8 .bins (tens of MB) are not hashed."""
    import hashlib as real_hashlib

    from core.int8.report import NetFiles, merge_sensitivity
    from core.int8.sensitivity import SIDECAR
    int8_bin = tmp_path / "encoder.int8.bin"
    int8_bin.write_bytes(b"\0" * 64)
    digest = real_hashlib.sha256(int8_bin.read_bytes()).hexdigest()
    hashed = []
    monkeypatch.setattr(real_hashlib, "file_digest",
                        lambda fh, name: hashed.append(name) or real_hashlib.sha256(fh.read()))
    nets = [NetFiles("encoder", tmp_path / "f.param", tmp_path / "f.bin", tmp_path / "encoder.int8.param", int8_bin)]
    report = {"layers": [{"net": "encoder", "layer": "linear_1"}]}
    (tmp_path / SIDECAR).write_text(json.dumps({"measured": False, "nets": {"encoder": {"int8_sha256": digest}}}))
    merge_sensitivity(report, nets)
    assert hashed == [] and "sensitivity" not in report
    (tmp_path / SIDECAR).write_text(json.dumps({"measured": True, "min_cosine": None, "nets": {"encoder": {
        "int8_sha256": digest, "sensitivity": {"linear_1": 0.99}}}}))
    merge_sensitivity(report, nets)
    assert hashed == ["sha256"] and report["layers"][0]["sensitivity"] == 0.99


@needs_kit
def test_reading_the_layout_keeps_nothing_alive():
    """ncnn's python binding keeps registered layer creators for the life of the process; neither record_extents
    nor record_loads may let them reach the .bin it read (record_loads' once did: the quantize step kept its 64 MB
    int8 encoder until exit). With ``read_weights`` ncnn's own ModelBin reads every weight and the loads are
    record_loads' too."""
    import gc
    import sys

    from core.int8.layers_loads import record_extents
    from core.ncnn.bin_layout import record_loads
    param = CE / "joiner_jit_trace-pnnx.ncnn.param"
    data = bytearray((CE / "joiner_jit_trace-pnnx.ncnn.bin").read_bytes())
    baseline = sys.getrefcount(data)
    for read_weights in (False, True):
        layers, consumed = record_extents(param, data, read_weights=read_weights)
        gc.collect()
        assert sys.getrefcount(data) == baseline
        expected = record_loads(param, bytes(data))
        assert consumed == expected[1] == len(data)
        assert [(l.name, l.loads) for l in layers] == [(l.name, l.loads) for l in expected[0]]
    record_loads(param, data)
    gc.collect()
    assert sys.getrefcount(data) == baseline
