"""core.int8.weight_scales: calibration's weight scales read one quantizable layer at a time.

A hand-written ncnn model whose .bin is mostly LSTM weights (as at the published LSTM size) with small
quantizable layers around it (fp32- and fp16-tagged weights, a 3x3 stride-1 convolution, a depthwise one):

* the scales are the same to the bit as reading the whole .bin through ncnn (core.ncnn.bin_layout.read_layout);
* the .bin is never read whole: no single read is larger than one layer's blob, and the bytes read are the
  file once (ncnn's loads recorded, streamed) plus the quantizable layers' blobs, nothing else;
* Python never holds the .bin (tracemalloc's peak stays far below the file's size);
* an already-int8 layer or a .bin that does not match is refused with a sentence naming it.
"""
from __future__ import annotations

import builtins
import io
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from core.int8.calibrate import QUANTIZABLE, CalibrationError, weight_scales
from core.int8.weight_scales import (
    quantizable_blobs,
    read_quantizable_weights,
    weight_scale_table,
)
from core.ncnn.bin_layout import record_loads

FP16_TAG = struct.pack("<I", 0x01306B47)
H = 128  # LSTM hidden size: its weights dominate the .bin, as in the published LSTM


def _tagged(values: np.ndarray, fp16: bool = False) -> bytes:
    if fp16:
        h = values.astype("<f2").tobytes()
        return FP16_TAG + h + b"\0" * (-len(h) % 4)
    return b"\0\0\0\0" + values.astype("<f4").tobytes()


def _model(tmp_path: Path, int8_layer: bool = False) -> tuple[Path, Path]:
    """(param, bin): InnerProduct (fp32, bias), two LSTMs (three tagged loads each), Convolution 3x3 s1 (six-bit, kernel_h
    not given), ConvolutionDepthWise (4 groups), Convolution 1x3 (kernel_h given), InnerProduct (fp16, no bias)."""
    rng = np.random.default_rng(7)
    layers = [  # (type, name, params, loads: (count, tagged, fp16))
        ("InnerProduct", "fc1", {0: 24, 1: 1, 2: 24 * 32, **({8: 2} if int8_layer else {})},
         [(24 * 32, True, False), (24, False, False)]),
        ("LSTM", "lstm1", {0: H, 1: 24 * 4 * H, 2: 0}, [(24 * 4 * H, True, False), (4 * H, True, False),
                                                        (H * 4 * H, True, False)]),
        ("LSTM", "lstm2", {0: H, 1: H * 4 * H, 2: 0}, [(H * 4 * H, True, False), (4 * H, True, False),
                                                       (H * 4 * H, True, False)]),
        ("Convolution", "conv3", {0: 8, 1: 3, 5: 1, 6: 8 * 4 * 9}, [(8 * 4 * 9, True, False), (8, False, False)]),
        ("ConvolutionDepthWise", "dw", {0: 8, 1: 3, 5: 0, 6: 8 * 9, 7: 4}, [(8 * 9, True, False)]),
        ("Convolution", "conv13", {0: 6, 1: 3, 11: 1, 5: 1, 6: 6 * 8 * 3}, [(6 * 8 * 3, True, False),
                                                                             (6, False, False)]),
        ("InnerProduct", "fc2", {0: 16, 1: 0, 2: 16 * H}, [(16 * H, True, True)]),
    ]
    lines = ["7767517", f"{len(layers) + 1} {len(layers) + 1}", "Input in0 0 1 b0"]
    data = b""
    for i, (kind, name, params, loads) in enumerate(layers):
        ps = " ".join(f"{k}={v}" for k, v in params.items())
        lines.append(f"{kind} {name} 1 1 b{i} b{i + 1} {ps}")
        for count, tagged, fp16 in loads:
            values = rng.standard_normal(count).astype(np.float32)
            data += _tagged(values, fp16) if tagged else values.astype("<f4").tobytes()
    param, binary = tmp_path / "m.param", tmp_path / "m.bin"
    param.write_text("\n".join(lines) + "\n")
    binary.write_bytes(data)
    return param, binary


def _old_scales(param: Path, binary: Path) -> dict[str, np.ndarray]:
    """What calibration computed before: the whole .bin through ncnn, the quantizable layers as Python readers."""
    from core.ncnn.bin_layout import read_layout
    regions, total = read_layout(param, binary.read_bytes(), kinds=QUANTIZABLE)
    assert total == binary.stat().st_size
    return {name: weight_scales(name, r.weights, r.rows, r.six_bit) for name, r in regions.items()}


def test_scales_are_bit_identical_to_reading_the_whole_bin(tmp_path):
    param, binary = _model(tmp_path)
    new = weight_scale_table(param, binary)
    old = _old_scales(param, binary)
    assert list(new) == list(old) == ["fc1", "conv3", "dw", "conv13", "fc2"]  # the table's line order is kept
    for name in old:
        assert new[name].dtype == old[name].dtype and new[name].tobytes() == old[name].tobytes(), name
    blobs = {b.name: b for b in quantizable_blobs(param, binary)}
    assert blobs["conv3"].six_bit and not blobs["conv13"].six_bit and blobs["dw"].rows == 4
    assert len(new["dw"]) == 4 and len(new["conv3"]) == 8 and len(new["fc2"]) == 16
    weights = read_quantizable_weights(param, binary)
    fp16 = np.frombuffer(binary.read_bytes()[blobs["fc2"].start + 4:blobs["fc2"].start + 4 + 2 * 16 * H], "<f2")
    assert np.array_equal(weights["fc2"][1], fp16.astype(np.float32))  # fp16 blobs decoded as ncnn does


class _Counting:
    """A .bin opened for reading, counting every read."""

    def __init__(self, f, sizes: list[int]):
        self.f, self.sizes = f, sizes

    def read(self, n=-1):
        b = self.f.read(n)
        self.sizes.append(len(b))
        return b

    def readinto(self, buf):
        n = self.f.readinto(buf)
        self.sizes.append(n or 0)
        return n

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()

    def __getattr__(self, name):
        return getattr(self.f, name)


def test_the_bin_is_never_read_whole(tmp_path, monkeypatch):
    param, binary = _model(tmp_path)
    expected = _old_scales(param, binary)
    blobs = quantizable_blobs(param, binary)
    size = binary.stat().st_size
    layers, _ = record_loads(param, binary.read_bytes())
    largest_load = max(ld.end - ld.start for layer in layers for ld in layer.loads)  # an LSTM's weights
    sizes: list[int] = []
    real_open = io.open

    def counting_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        return _Counting(f, sizes) if Path(file) == binary and "r" in mode else f

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(io, "open", counting_open)  # pathlib's read_bytes opens through io.open
    table = weight_scale_table(param, binary)
    monkeypatch.undo()
    assert all(table[n].tobytes() == expected[n].tobytes() for n in expected)
    assert max(sizes) <= largest_load < size / 3, "the .bin was read in one piece"
    # the file once (ncnn's loads recorded as they stream by), then only each quantizable layer's weight blob
    assert sum(sizes) == size + sum(b.end - b.start for b in blobs)


def test_python_never_holds_the_bin(tmp_path, monkeypatch):
    import core.ncnn.param
    # load_param's read(limit + 1) reserves the limit (256 MB) that tracemalloc counts though no page is touched
    monkeypatch.setattr(core.ncnn.param, "MAX_PARAM_BYTES", 1 << 16)
    param, binary = _model(tmp_path)
    size = binary.stat().st_size
    weight_scale_table(param, binary)  # warm up imports
    tracemalloc.start()
    try:
        weight_scale_table(param, binary)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < size / 4, f"{peak} bytes traced for a {size}-byte .bin"


def test_int8_layer_and_mismatched_bin_are_refused(tmp_path):
    param, binary = _model(tmp_path, int8_layer=True)
    with pytest.raises(CalibrationError, match="'fc1'.*already int8"):
        weight_scale_table(param, binary)
    param, binary = _model(tmp_path)
    binary.write_bytes(binary.read_bytes()[:1000])
    with pytest.raises(CalibrationError, match="m.param"):
        weight_scale_table(param, binary)
