"""Built-in int8 quantization: ncnn2int8's job for Convolution and InnerProduct, with the byte layout proven.

The .bin layout is not guessed per layer type: ncnn itself loads the model
through a recording DataReader, and the quantizable layer types are replaced
(on that read-only net) by Python layers that note where their weight and bias
reads start and end. Every other layer's bytes are copied verbatim, so custom
layers with weights (e.g. SimpleUpsample) keep their offsets - where stock
ncnn2int8 drops them. The written .bin is loaded again the same way and must
be consumed to its last byte.

A layer is quantized when the table has both its input scale (``name``) and
its weight scales (``name_param_0``), as ncnn2int8 decides. Weights become int8
(per output channel, round half away from zero, clipped to +-127) followed by
the weight and input scales; the param line gets ``8=2``.
"""
from __future__ import annotations

import ctypes
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .atomic import atomic_write_bytes
from .calibrate import CalibrationError, ScaleTable
from .calibration_run import Keeper, register_meta_layer
from .ncnn_param import load_param

INT8_TAG = struct.pack("<I", 0x000D4B38)
SUPPORTED = ("Convolution", "InnerProduct")
INT8_SCALE_TERM = 2

_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_get_name = ctypes.pythonapi.PyCapsule_GetName
_get_name.restype = ctypes.c_char_p
_get_name.argtypes = [ctypes.py_object]


class QuantizeError(CalibrationError):
    """The model cannot be quantized correctly; nothing was written. The message names the layer."""


def _recording_reader(data: bytes):
    import ncnn

    class RecordingReader(ncnn.DataReader):
        """Feeds ncnn the .bin from memory and remembers how far it has read."""

        def __init__(self):
            super().__init__()
            self.pos = 0

        def scan(self, fmt, p):
            return 0

        def read(self, buf, size):
            n = min(size, len(data) - self.pos)
            ctypes.memmove(_get_pointer(buf, _get_name(buf)), data[self.pos:self.pos + n], n)
            self.pos += n
            return n

    return RecordingReader()


@dataclass
class WeightRegion:
    name: str
    type: str
    num_output: int
    weight: tuple[int, int]  # byte range of the weight blob (tag + data + padding)
    bias: tuple[int, int] | None
    weights: np.ndarray = field(repr=False, default=None)
    rows: int = 0  # weight rows with their own scale: outputs, or groups for ConvolutionDepthWise
    six_bit: bool = False  # a 3x3 stride-1 convolution: ncnn's winograd int8 path wants 6-bit weights


def read_layout(param: Path, data: bytes, custom: dict | None = None,
                kinds: tuple[str, ...] = SUPPORTED) -> tuple[dict[str, WeightRegion], int]:
    """Where each layer of ``kinds`` keeps its weights and bias in ``data`` (and the weights themselves),
    and how many bytes ncnn reads. Calibration reads the weights through this too."""
    import ncnn

    keep: list = []
    regions: dict[str, WeightRegion] = {}
    reader = _recording_reader(data)

    def reader_layer(kind: str):
        class Reader(ncnn.Layer):
            def __init__(self):
                super().__init__()
                self.one_blob_only = True

            def load_param(self, pd):
                self.num_output = pd.get(0, 0)
                self.int8 = pd.get(8, 0)
                self.six_bit = False
                if kind == "InnerProduct":
                    self.bias_term, self.size, self.rows = pd.get(1, 0), pd.get(2, 0), self.num_output
                else:
                    kw = pd.get(1, 0)
                    kh, dw, sw = pd.get(11, kw), pd.get(2, 1), pd.get(3, 1)
                    dh, sh = pd.get(12, dw), pd.get(13, sw)
                    self.bias_term, self.size = pd.get(5, 0), pd.get(6, 0)
                    self.rows = pd.get(7, 1) if kind == "ConvolutionDepthWise" else self.num_output
                    self.six_bit = kind == "Convolution" and (kw, kh, dw, dh, sw, sh) == (3, 3, 1, 1, 1, 1)
                return 0

            def load_model(self, mb):
                if self.int8:
                    raise QuantizeError(f"{param}: layer {self.name!r} ({kind}) is already int8; use the fp32 model")
                start = reader.pos
                self.weights = np.array(mb.load(self.size, 0)).copy()
                weight = (start, reader.pos)
                bias = None
                if self.bias_term:
                    mb.load(self.num_output, 1)
                    bias = (weight[1], reader.pos)
                self.region = (weight, bias)
                return 0

        def create():
            layer = Reader()
            keep.append(layer)
            return layer
        keep.append(create)
        return create

    net = ncnn.Net()
    keep.append(net)
    keeper = Keeper()
    keep.append(keeper)
    register_meta_layer(net, keeper)
    for kind, creator in (custom or {}).items():
        net.register_custom_layer(kind, creator, lambda layer: None)
    for kind in kinds:
        net.register_custom_layer(kind, reader_layer(kind), lambda layer: None)
    if net.load_param(str(param)) != 0:
        raise QuantizeError(f"{param}: python ncnn could not read it")
    if net.load_model(reader) != 0:
        raise QuantizeError(f"{param}: ncnn could not read its weights (the .bin does not match the param)")
    for layer in net.layers():
        if layer.type in kinds:
            weight, bias = layer.region
            regions[layer.name] = WeightRegion(layer.name, layer.type, layer.num_output, weight, bias, layer.weights,
                                               layer.rows, layer.six_bit)
    return regions, reader.pos


def _int8(weights: np.ndarray, scales: np.ndarray, rows: int) -> np.ndarray:
    w = weights.reshape(rows, -1).astype(np.float64) * scales.reshape(rows, 1)
    q = np.sign(w) * np.floor(np.abs(w) + 0.5)  # round half away from zero, like ncnn
    return np.clip(q, -127, 127).astype(np.int8).reshape(-1)


@dataclass
class QuantizeReport:
    quantized: list[str]
    kept_float: list[str]  # quantizable layers without table entries
    bytes_before: int
    bytes_after: int
    weight_bytes_before: int
    weight_bytes_after: int


def quantize(param: Path, binary: Path, table: ScaleTable, out_param: Path, out_bin: Path) -> QuantizeReport:
    """Write the int8 param/bin pair; the originals are only read."""
    parsed = load_param(param)
    if parsed.model is None or not parsed.model.ok:
        raise QuantizeError(parsed.describe())
    model = parsed.model
    data = Path(binary).read_bytes()
    regions, consumed = read_layout(param, data)
    if consumed != len(data):
        raise QuantizeError(f"{binary}: ncnn reads {consumed} of its {len(data)} bytes; the file does not match "
                            f"{param}")
    unsupported = [l for l in model.layers if l.name in table.activations and l.type not in SUPPORTED]
    if unsupported:
        l = unsupported[0]
        raise QuantizeError(f"layer {l.name!r} ({l.type}) has a table entry but the built-in quantizer cannot write "
                            f"{l.type} in int8; drop its lines from the table to keep it in float")
    chosen = [r for r in regions.values() if r.name in table.activations]
    for r in chosen:
        if r.name not in table.weights:
            raise QuantizeError(f"layer {r.name!r} ({r.type}): the table has its input scale but no "
                                f"'{r.name}_param_0' weight scales")
        if table.weights[r.name].size != r.num_output:
            raise QuantizeError(f"layer {r.name!r} ({r.type}): {table.weights[r.name].size} weight scales for "
                                f"{r.num_output} outputs")
    out = bytearray()
    pos = 0
    before = after = 0
    for r in sorted(chosen, key=lambda r: r.weight[0]):
        out += data[pos:r.weight[0]]
        scales = table.weights[r.name].astype(np.float32)
        q = _int8(r.weights, scales, r.num_output).tobytes()
        blob = INT8_TAG + q + b"\0" * (-len(q) % 4)
        before += r.weight[1] - r.weight[0]
        after += len(blob)
        out += blob
        end = r.weight[1]
        if r.bias is not None:
            out += data[r.bias[0]:r.bias[1]]
            end = r.bias[1]
        out += scales.tobytes() + np.array([table.activations[r.name].scale], dtype=np.float32).tobytes()
        pos = end
    out += data[pos:]
    new_model = model
    for r in chosen:
        layer = new_model.layer_named(r.name)
        line = new_model.lines[layer.line - 1].rstrip("\r\n") + f" 8={INT8_SCALE_TERM}"
        new_model = new_model.with_line_replaced(layer.line, line)
    new_bytes = bytes(out)
    _verify(new_model.to_bytes(), new_bytes, out_param)
    atomic_write_bytes(out_bin, new_bytes)
    atomic_write_bytes(out_param, new_model.to_bytes())
    kept = [r.name for r in regions.values() if r not in chosen]
    return QuantizeReport([r.name for r in chosen], kept, len(data), len(new_bytes), before, after)


def _verify(param_bytes: bytes, bin_bytes: bytes, out_param: Path) -> None:
    """Load what is about to be written through ncnn and check every byte is consumed."""
    import ncnn
    import tempfile

    keeper = Keeper()
    with tempfile.NamedTemporaryFile("wb", suffix=".param", dir=Path(out_param).parent, delete=True) as tmp:
        tmp.write(param_bytes)
        tmp.flush()
        net = keeper.keep(ncnn.Net())
        register_meta_layer(net, keeper)
        if net.load_param(tmp.name) != 0:
            raise QuantizeError(f"{out_param}: the int8 param would not load; nothing was written")
        reader = _recording_reader(bin_bytes)
        if net.load_model(reader) != 0 or reader.pos != len(bin_bytes):
            raise QuantizeError(f"{out_param}: the int8 weights would not load exactly (read {reader.pos} of "
                                f"{len(bin_bytes)} bytes); nothing was written")
