"""Where every layer's weights lie in a .bin, as ncnn itself reads them.

ncnn loads the model through a recording DataReader, with every built-in layer type wrapped (on that read-only
net) in a Python layer that hands ncnn's own layer a recording ModelBin: each ``load(w, type)`` is known with its
byte range and type (0 = tagged, 1 = raw fp32). Quantization, calibration's weight scales and the Zipformer .bin
rewrite all read the layout from here. A layer's loaded weights are dropped once their place is known, so reading
the layout of a published-size model costs one layer's memory.
"""
from __future__ import annotations

import contextlib
import ctypes
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.ncnn.net import Keeper, register_meta_layer
from core.ncnn.param import load_param

_get_pointer = ctypes.pythonapi.PyCapsule_GetPointer
_get_pointer.restype = ctypes.c_void_p
_get_pointer.argtypes = [ctypes.py_object, ctypes.c_char_p]
_get_name = ctypes.pythonapi.PyCapsule_GetName
_get_name.restype = ctypes.c_char_p
_get_name.argtypes = [ctypes.py_object]


def reader_buffer(buf, size: int) -> memoryview:
    """The writable bytes behind the buffer ncnn hands a Python ``DataReader.read(buf, size)``."""
    return memoryview((ctypes.c_char * size).from_address(_get_pointer(buf, _get_name(buf)))).cast("B")


class LayoutError(ValueError):
    """ncnn cannot read the model the way it is laid out; the message names the file or the layer."""



SUPPORTED = ("Convolution", "InnerProduct")


def _recording_reader(data):
    """A DataReader over ``data``: bytes in memory, or an open binary file (read as ncnn asks, one load at a
    time, so the whole .bin is never in memory)."""
    import ncnn

    if hasattr(data, "readinto"):
        return _file_reader(data)
    view = np.frombuffer(data, dtype=np.uint8)  # no copy per read: ncnn reads the weights straight from it

    class RecordingReader(ncnn.DataReader):
        """Feeds ncnn the .bin from memory and remembers how far it has read."""

        def __init__(self):
            super().__init__()
            self.pos = 0

        def scan(self, fmt, p):
            return 0

        def read(self, buf, size):
            n = min(size, len(view) - self.pos)
            if n > 0:
                ctypes.memmove(_get_pointer(buf, _get_name(buf)), view.ctypes.data + self.pos, n)
            self.pos += max(n, 0)
            return n

    return RecordingReader()


def _file_reader(f):
    import ncnn

    class FileReader(ncnn.DataReader):
        """Feeds ncnn from an open binary file, straight into the buffer ncnn gives, and remembers how far it has
        read (``pos``, counted from where the file stood when reading began)."""

        def __init__(self):
            super().__init__()
            self.pos = 0

        def scan(self, fmt, p):
            return 0

        def read(self, buf, size):
            if size <= 0:
                return 0
            n = f.readinto(reader_buffer(buf, size)) or 0
            self.pos += n
            return n

    return FileReader()


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
    and how many bytes ncnn reads. Every quantizable layer's weights stay in memory: calibration reads its
    weight scales one layer at a time instead (core.int8.weight_scales)."""
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
                    raise LayoutError(f"{param}: layer {self.name!r} ({kind}) is already int8; use the fp32 model")
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
        raise LayoutError(f"{param}: python ncnn could not read it")
    if net.load_model(reader) != 0:
        raise LayoutError(f"{param}: ncnn could not read its weights (the .bin does not match the param)")
    for layer in net.layers():
        if layer.type in kinds:
            weight, bias = layer.region
            regions[layer.name] = WeightRegion(layer.name, layer.type, layer.num_output, weight, bias, layer.weights,
                                               layer.rows, layer.six_bit)
    return regions, reader.pos


@dataclass
class Load:
    """One ``ModelBin::load(w, type)`` call of a layer and the bytes it consumed."""

    w: int
    type: int  # 0 = tagged (fp32 / fp16 / int8 by its tag), 1 = raw fp32
    start: int
    end: int


@dataclass
class LayerLoads:
    name: str
    type: str
    params: dict[int, int]  # the integer view of keys 0..22 (ncnn's ParamDict::get(id, int))
    loads: list[Load]


@contextlib.contextmanager
def _quiet_stderr():
    """Hide ncnn's 'overwrite built-in layer type X' lines (printed on fd 2 by register_custom_layer)."""
    import os
    import sys
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):
        yield
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def record_loads(param: Path, data, custom: dict | None = None) -> tuple[list[LayerLoads], int]:
    """Every layer's weight loads, in load order, as ncnn itself performs them, and how many bytes ncnn reads.

    ``data``: the .bin's bytes, or the .bin open for binary reading (streamed: memory stays at one layer's
    weights, as ``load`` offsets count from where the file stood).

    Each built-in layer type is wrapped in a Python layer that creates ncnn's own layer, passes it the
    ParamDict and a ModelBin that records every ``load(w, type)``. Types ncnn cannot create (custom
    layers) must come in ``custom`` (type -> creator) or be SherpaMetaData, else the model is refused:
    their weights' extent would be unknown.
    """
    import ncnn

    reader = _recording_reader(data)

    class RecordingModelBin(ncnn.ModelBin):
        def __init__(self, inner, entry: LayerLoads):
            super().__init__()
            self.inner, self.entry = inner, entry

        def load(self, w, type):
            start = reader.pos
            m = self.inner.load(w, type)
            self.entry.loads.append(Load(int(w), int(type), start, reader.pos))
            return m

    return load_recorded(param, reader, RecordingModelBin, custom)


def load_recorded(param: Path, reader, model_bin, custom: dict | None = None) -> tuple[list[LayerLoads], int]:
    """Load ``param`` with every built-in layer type wrapped so that its ``load_model`` gets
    ``model_bin(ncnn's ModelBin, its LayerLoads entry)`` (which records the loads), the weights coming from
    ``reader`` (an ncnn DataReader with a ``pos``); returns the entries and ``reader.pos``. The record_loads of
    this module and core.int8.layers_loads differ only in their ModelBin.

    ncnn's python binding keeps registered layer creators, and all they reach, for the life of the process: they
    reach ``model_bin`` (and through it the reader and the .bin) and the entries only through a dict emptied on
    return."""
    found: list[LayerLoads] = []
    held = {"model_bin": model_bin, "found": found}
    try:
        return _load_recorded(param, reader, held, custom)
    finally:
        held.clear()


def _load_recorded(param: Path, reader, held: dict, custom: dict | None) -> tuple[list[LayerLoads], int]:
    import ncnn

    parsed = load_param(param)
    if parsed.model is None:
        raise LayoutError(parsed.describe())
    keep = Keeper()

    def wrapper(kind: str):
        class Wrapper(ncnn.Layer):
            def __init__(self):
                super().__init__()
                self.inner = ncnn.create_layer(kind)
                self.params = {}

            def load_param(self, pd):
                self.params = {k: int(pd.get(k, 0)) for k in range(23)}
                return self.inner.load_param(pd)

            def load_model(self, mb):
                entry = LayerLoads(self.name, kind, self.params, [])
                held["found"].append(entry)
                ret = self.inner.load_model(held["model_bin"](mb, entry))
                # only where the loads lie is wanted: drop the weights ncnn just read, so memory stays at one
                # layer's weights instead of the whole model's
                self.inner = ncnn.create_layer(kind)
                return ret

        def create():
            return keep.keep(Wrapper())
        return keep.keep(create)

    net = keep.keep(ncnn.Net())
    register_meta_layer(net, keep)
    custom = custom or {}
    with _quiet_stderr():
        for kind, creator in custom.items():
            net.register_custom_layer(kind, creator, lambda layer: None)
        for kind in sorted(parsed.model.layer_types()):
            if kind in custom or kind in ("SherpaMetaData", "Input"):
                continue
            probe = ncnn.create_layer(kind)
            if probe is None:
                layer = parsed.model.layers_of_type(kind)[0]
                raise LayoutError(f"layer {layer.name!r} ({kind}): python ncnn does not know this layer type, so "
                                  "where its weights lie in the .bin is unknown; nothing was written")
            del probe
            net.register_custom_layer(kind, wrapper(kind), lambda layer: None)
    if net.load_param(str(param)) != 0:
        raise LayoutError(f"{param}: python ncnn could not read it")
    if net.load_model(reader) != 0:
        raise LayoutError(f"{param}: ncnn could not read its weights (the .bin does not match the param)")
    return held["found"], reader.pos
