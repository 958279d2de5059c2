"""Calibration's weight scales, read from the .bin one quantizable layer at a time.

At the published sizes the fp32 .bin is hundreds of MB, mostly weights that get no table entry (an LSTM's);
holding it whole, and letting ncnn load those weights only to skip them, tripled calibration's memory. Here
ncnn's own loads are recorded over the file streamed (core.ncnn.bin_layout.record_loads: one layer's weights in
memory at a time), then only each quantizable layer's weight blob is read, at its offset, decoded by ncnn's own
ModelBin (the same bytes and conversion as loading the model, so the scales are the same to the bit), and
dropped once its scales are computed.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from core.int8.calibrate import QUANTIZABLE, CalibrationError, weight_scales


@dataclass
class WeightBlob:
    """Where one quantizable layer's weights lie in the .bin (the tagged blob: tag, data, padding)."""

    name: str
    type: str
    start: int
    end: int
    size: int  # the number of weights ncnn loads
    rows: int  # weight rows with their own scale: outputs, or groups for ConvolutionDepthWise
    six_bit: bool  # a 3x3 stride-1 convolution: ncnn's winograd int8 path wants 6-bit weights


def _blob(layer, param: Path) -> WeightBlob:
    """A quantizable layer's weight blob from its recorded loads and its ParamDict (0 = not given: none of these
    keys can be 0 in a valid layer, so 0 means ncnn's default)."""
    p = layer.params
    if p[8]:
        raise CalibrationError(f"{param}: layer {layer.name!r} ({layer.type}) is already int8; use the fp32 model")
    size = p[2] if layer.type == "InnerProduct" else p[6]
    if not layer.loads or layer.loads[0].type != 0 or layer.loads[0].w != size:
        raise CalibrationError(f"{param}: layer {layer.name!r} ({layer.type}) has no weights of its own in the .bin "
                               "(weights given as an input?); the built-in calibration cannot quantize it")
    first = layer.loads[0]
    rows, six_bit = p[0], False
    if layer.type == "ConvolutionDepthWise":
        rows = p[7] or 1
    if layer.type == "Convolution":
        kw = p[1]
        kh, dw, sw = p[11] or kw, p[2] or 1, p[3] or 1
        dh, sh = p[12] or dw, p[13] or sw
        six_bit = (kw, kh, dw, dh, sw, sh) == (3, 3, 1, 1, 1, 1)
    return WeightBlob(layer.name, layer.type, first.start, first.end, size, rows, six_bit)


def quantizable_blobs(param: Path, binary: Path) -> list[WeightBlob]:
    """Every quantizable layer's weight blob, in load order, as ncnn reads the .bin (streamed, never whole)."""
    from core.ncnn.bin_layout import LayoutError, record_loads
    try:
        with open(binary, "rb") as f:
            layers, _ = record_loads(param, f)
    except LayoutError as exc:
        raise CalibrationError(str(exc)) from None
    except OSError as exc:
        raise CalibrationError(f"{binary}: cannot read it ({exc.strerror or exc})") from None
    return [_blob(layer, param) for layer in layers if layer.type in QUANTIZABLE]


def _region_reader(f, blob: WeightBlob):
    """A DataReader that gives ncnn the file from ``blob.start`` on, never past ``blob.end``."""
    import ncnn

    from core.ncnn.bin_layout import reader_buffer

    class RegionReader(ncnn.DataReader):
        def __init__(self):
            super().__init__()
            self.pos = blob.start

        def scan(self, fmt, p):
            return 0

        def read(self, buf, size):
            n = min(size, blob.end - self.pos)
            if n <= 0:
                return 0
            f.seek(self.pos)
            got = f.readinto(reader_buffer(buf, n)) or 0
            self.pos += got
            return got

    return RegionReader()


def read_blob(f, blob: WeightBlob, binary: Path) -> np.ndarray:
    """One layer's weights as float32, read from the open .bin ``f`` at the blob's place only."""
    import ncnn

    reader = _region_reader(f, blob)
    mb = ncnn.ModelBinFromDataReader(reader)
    mat = mb.load(blob.size, 0)
    if reader.pos != blob.end or mat.empty():
        raise CalibrationError(f"{binary}: the weights of layer {blob.name!r} ({blob.type}) could not be read again "
                               f"where ncnn read them (bytes {blob.start}..{blob.end}); was the file changed?")
    weights = np.array(mat, dtype=np.float32).reshape(-1)
    del mat, mb
    return weights


def iter_quantizable_weights(param: Path, binary: Path) -> Iterator[tuple[str, str, np.ndarray, int, bool]]:
    """(name, type, weights, rows, six_bit) for every quantizable layer, one layer's weights at a time."""
    blobs = quantizable_blobs(param, binary)
    try:
        with open(binary, "rb") as f:
            for blob in blobs:
                yield blob.name, blob.type, read_blob(f, blob, binary), blob.rows, blob.six_bit
    except OSError as exc:
        raise CalibrationError(f"{binary}: cannot read it ({exc.strerror or exc})") from None


def read_quantizable_weights(param: Path, binary: Path) -> dict[str, tuple[str, np.ndarray, int, bool]]:
    """name -> (type, weights, rows, six_bit) for every quantizable layer (all of them in memory: for small
    models and tests; calibration uses ``weight_scale_table``)."""
    return {name: (kind, w, rows, six_bit) for name, kind, w, rows, six_bit in iter_quantizable_weights(param, binary)}


def weight_scale_table(param: Path, binary: Path) -> dict[str, np.ndarray]:
    """name -> per-row weight scales (core.int8.calibrate.weight_scales) for every quantizable layer, each
    layer's weights released once its scales are computed."""
    table: dict[str, np.ndarray] = {}
    for name, _kind, w, rows, six_bit in iter_quantizable_weights(param, binary):
        table[name] = weight_scales(name, w, rows, six_bit)
        del w
    return table
