"""Built-in int8 quantization (ncnn2int8's job) with the byte layout proven.

The .bin layout is not guessed per layer type. ncnn loads the model with every
built-in layer type wrapped (on that read-only net) in a Python layer that hands
ncnn's own layer a recording ModelBin: so each layer's every ``load(w, type)``
is known with its byte range and its load type (0 = tagged, 1 = raw fp32); the
range follows from the call and the blob's tag (core.int8.layers_loads), so the
float .bin is mapped, not copied, and its weights are read once, here. Bytes
that no recorded load covers (a custom layer's) are copied verbatim. The written
.bin is loaded again through ncnn's own ModelBin and must be consumed to its
last byte.

What is written (the formats of the ncnn that sherpa-ncnn 2.1.15 links,
Tencent/ncnn c4193aad; its ncnn2int8 writes the same):

* Convolution / InnerProduct with table entries (``name`` and ``name_param_0``):
  int8 weights per output channel (round half away from zero, clipped to
  +-127), bias unchanged, then the weight scales and the input scale; ``8=2``.
* Gemm with a constant B (pnnx's Linear on a 3-D input) or a constant,
  untransposed A: weight-only int8; ncnn quantizes the activations at runtime,
  so no table entry is needed. B gets one scale for the whole matrix, A one per
  row; the scales follow the layer's C; ``18=2``.
* LSTM: weight_xc and weight_hc int8 with one scale per gate row; bias_c and
  the projection weight_hr stay float; the two scale arrays follow; ``8=2``.
* Embed (a decoder's; the pipeline keeps the decoder fp16): weight-only int8
  with one scale for the table, after the bias; ``18=2``.
* every other tagged (type 0) fp32 load is written as fp16 (tag 0x01306B47),
  which ncnn's ModelBin widens back to fp32; raw (type 1) loads - biases,
  LayerNorm, scales - stay fp32 byte for byte.
"""
from __future__ import annotations

import mmap
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core.common.atomic import atomic_write_pair
from core.int8.calibrate import CalibrationError, ScaleTable
from core.int8.layers_loads import record_extents
from core.ncnn.bin_layout import SUPPORTED, LayerLoads, LayoutError, Load
from core.ncnn.param import _split_eol, load_param

INT8_TAG = struct.pack("<I", 0x000D4B38)
INT8_SCALE_TERM = 2



def _map(path: Path):
    """The float .bin mapped read-only (bytes when empty): the weights are read once, by the quantizer, instead of
    being copied whole into memory first."""
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            return b""
        return mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)


class QuantizeError(CalibrationError):
    """The model cannot be quantized correctly; nothing was written. The message names the layer."""


_BLOCK = 1 << 16  # values per block in _int8: its float64 temporaries stay in cache (and memory stays small)


def _int8(weights: np.ndarray, scales: np.ndarray, rows: int) -> np.ndarray:
    """Round half away from zero (like ncnn) of weight * scale, per row, clipped to +-127.

    The product of two float32 is exact in float64; ``trunc(x + copysign(0.5, x))`` is ncnn's
    ``sign(x) * floor(|x| + 0.5)`` to the bit (the float64 addition rounds the same way for x and -x). Done a block
    of rows at a time: one pass over the weights instead of nine whole-matrix float64 temporaries."""
    w = np.asarray(weights).reshape(rows, -1)
    s64 = np.asarray(scales).reshape(rows, 1).astype(np.float64)
    cols = w.shape[1]
    out = np.empty((rows, cols), np.int8)
    if out.size == 0:
        return out.reshape(-1)
    rstep = max(1, _BLOCK // max(cols, 1))
    cstep = cols if rstep > 1 else max(1, min(cols, _BLOCK))  # a long row (one Gemm scale) in pieces too
    buf = np.empty(min(rows, rstep) * cstep, np.float64)
    half = np.empty_like(buf)
    for r0 in range(0, rows, rstep):
        r1 = min(rows, r0 + rstep)
        for c0 in range(0, cols, cstep):
            c1 = min(cols, c0 + cstep)
            n = (r1 - r0) * (c1 - c0)
            x, h = buf[:n].reshape(r1 - r0, c1 - c0), half[:n].reshape(r1 - r0, c1 - c0)
            np.multiply(w[r0:r1, c0:c1], s64[r0:r1], out=x)
            np.copysign(0.5, x, out=h)
            np.add(x, h, out=x)
            np.trunc(x, out=x)
            np.clip(x, -127, 127, out=x)
            out[r0:r1, c0:c1] = x
    return out.reshape(-1)


FP16_TAG = struct.pack("<I", 0x01306B47)
FP32_TAGS = (struct.pack("<I", 0), struct.pack("<I", 0x0002C056))
FP16_MAX = 65504.0
DYNAMIC = ("Gemm", "LSTM", "Embed")  # weight-only int8 (activations quantized at runtime): no table entries
INT8_KEY = {"Convolution": 8, "InnerProduct": 8, "LSTM": 8, "Gemm": 18, "Embed": 18}


def _floats(data, ld: Load) -> np.ndarray | None:
    """The float values of a tagged load that holds fp32 or fp16 data (None for int8 or quantized-table data).
    fp32 values are a read-only view of ``data`` (no copy); fp16 ones are widened to a new float32 array."""
    if ld.type != 0:
        return None
    tag = bytes(data[ld.start:ld.start + 4])
    size = ld.end - ld.start - 4
    if tag in FP32_TAGS and size == 4 * ld.w:
        return np.frombuffer(data, dtype="<f4", count=ld.w, offset=ld.start + 4)
    if tag == FP16_TAG and size == 2 * ld.w + (-2 * ld.w % 4):
        return np.frombuffer(data, dtype="<f2", count=ld.w, offset=ld.start + 4).astype(np.float32)
    return None


def _fp16_fits(values: np.ndarray) -> bool:
    """fp16 holds the values: all finite and within +-65504."""
    return bool(np.isfinite(values).all()) and not (values.size and float(np.abs(values).max()) > FP16_MAX)


def _fp16_bytes(values: np.ndarray) -> bytes:
    h = values.astype("<f2").tobytes()
    return FP16_TAG + h + b"\0" * (-len(h) % 4)


def _fp16_blob(values: np.ndarray) -> bytes | None:
    """A tagged fp16 blob, or None when fp16 cannot hold the values (non-finite or beyond +-65504)."""
    return _fp16_bytes(values) if _fp16_fits(values) else None


def _int8_blob(q: np.ndarray) -> bytearray:
    """Tag, int8 values, zero padding to 4 bytes: written into one buffer (one copy of a layer's weights)."""
    n = q.size
    blob = bytearray(4 + n + (-n % 4))
    blob[:4] = INT8_TAG
    np.frombuffer(blob, np.int8, count=n, offset=4)[:] = q
    return blob


def _row_scales(w: np.ndarray) -> np.ndarray:
    """127/absmax per row; an all-zero row gets 1 (its int8 values are all 0 whatever the scale)."""
    # max(max, -min): |w|'s row maxima without a whole-matrix |w| temporary
    absmax = np.maximum(w.max(axis=1), -w.min(axis=1)) if w.size else np.zeros(w.shape[0], np.float32)
    return np.where(absmax > 0, 127.0 / np.where(absmax > 0, absmax, 1.0), 1.0).astype(np.float32)


def _raw(values: np.ndarray) -> bytes:
    return np.asarray(values, dtype="<f4").tobytes()


@dataclass
class QuantizeReport:
    quantized: list[str]  # Convolution/InnerProduct quantized with the table's scales
    kept_float: list[str]  # quantizable layers without table entries
    bytes_before: int
    bytes_after: int
    weight_bytes_before: int  # the int8 weights' blobs, before and after (all int8 layers)
    weight_bytes_after: int
    dynamic: list[str] = field(default_factory=list)  # Gemm/LSTM/Embed: weight-only int8
    fp16: list[str] = field(default_factory=list)  # layers whose other tagged float weights are now fp16
    notes: list[str] = field(default_factory=list)  # layers of a dynamic type left in float, and why
    float_by_choice: list[str] = field(default_factory=list)  # could be int8, kept float on request (mixed precision)


class _Plan:
    """New bytes for some loads (bytes, or a :class:`_Blob` made when the .bin is assembled), and bytes (scales)
    to append after a layer's last load."""

    def __init__(self):
        self.replace: dict[int, bytes | _Blob] = {}  # keyed by id() of the Load
        self.after: dict[int, bytes] = {}  # keyed by id() of the LayerLoads: appended after its last load


class _Blob:
    """A load's new bytes, made only when the .bin is assembled: one layer's int8 (or fp16) copy exists at a time
    instead of every layer's at once beside the assembled .bin (64 MB at the published LSTM size)."""

    __slots__ = ("make", "size")

    def __init__(self, size: int, make):
        self.size, self.make = size, make

    def __len__(self) -> int:
        return self.size


def _lazy_int8(data, ld: Load, scales: np.ndarray, rows: int) -> _Blob:
    """The int8 blob of a float load (``ld.w`` values, ``rows`` rows with their ``scales``), made on demand."""
    return _Blob(4 + ld.w + (-ld.w % 4), lambda: _int8_blob(_int8(_floats(data, ld), scales, rows)))


def _need_floats(data: bytes, layer: LayerLoads, ld: Load, what: str) -> np.ndarray:
    values = _floats(data, ld)
    if values is None:
        raise QuantizeError(f"layer {layer.name!r} ({layer.type}): its {what} is not fp32/fp16 data "
                            "(already quantized?); use the fp32 model")
    return values


def _plan_static(data: bytes, layer: LayerLoads, table: ScaleTable, plan: _Plan) -> tuple[int, int]:
    """Convolution / InnerProduct with table scales: int8 weight (per output channel), bias kept, scales after."""
    p = layer.params
    num_output = p[0]
    if p[8]:
        raise QuantizeError(f"{layer.name!r} ({layer.type}) is already int8; use the fp32 model")
    bias_term = p[1] if layer.type == "InnerProduct" else p[5]
    expected = [0, 1] if bias_term else [0]
    if [ld.type for ld in layer.loads] != expected:
        raise QuantizeError(f"layer {layer.name!r} ({layer.type}): ncnn loaded {len(layer.loads)} blob(s) of types "
                            f"{[ld.type for ld in layer.loads]}, expected {expected}; cannot write it in int8")
    scales = table.weights[layer.name].astype(np.float32)
    if scales.size != num_output:
        raise QuantizeError(f"layer {layer.name!r} ({layer.type}): {scales.size} weight scales for "
                            f"{num_output} outputs")
    w = layer.loads[0]
    values = _need_floats(data, layer, w, "weight")
    values.reshape(num_output, -1)  # a weight that does not split into num_output rows fails here, as before
    blob = _lazy_int8(data, w, scales, num_output)
    plan.replace[id(w)] = blob
    plan.after[id(layer)] = _raw(scales) + _raw([table.activations[layer.name].scale])
    return w.end - w.start, len(blob)


def _plan_gemm(data: bytes, layer: LayerLoads, plan: _Plan) -> tuple[int, int] | str:
    """Weight-only int8 Gemm; a string says why the layer stays float."""
    p = layer.params
    trans_a, const_a, const_b, const_c, m, n, k, bcast = p[2], p[4], p[5], p[6], p[7], p[8], p[9], p[10]
    if p[18]:
        raise QuantizeError(f"{layer.name!r} (Gemm) is already int8; use the fp32 model")
    if const_a and const_b:
        return "both A and B are constant"
    if not const_a and not const_b:
        return "no constant matrix (both operands are activations)"
    if const_a and trans_a:
        return "constant A is transposed (transA=1)"
    expected = 1 + (1 if const_c and bcast != -1 else 0)
    if len(layer.loads) != expected or any(ld.type != 0 for ld in layer.loads):
        raise QuantizeError(f"layer {layer.name!r} (Gemm): ncnn loaded {len(layer.loads)} blob(s), expected "
                            f"{expected} tagged ones; cannot write it in int8")
    ld = layer.loads[0]
    values = _need_floats(data, layer, ld, "constant matrix")
    if const_a:
        if values.size != m * k:
            raise QuantizeError(f"layer {layer.name!r} (Gemm): A holds {values.size} values, not M*K = {m * k}")
        scales = _row_scales(values.reshape(m, k))
        blob = _lazy_int8(data, ld, scales, m)
        tail = _raw(scales)
    else:
        if values.size != n * k:
            raise QuantizeError(f"layer {layer.name!r} (Gemm): B holds {values.size} values, not N*K = {n * k}")
        scale = _row_scales(values.reshape(1, -1))
        blob = _lazy_int8(data, ld, scale, 1)
        tail = _raw(scale)
    plan.replace[id(ld)] = blob
    plan.after[id(layer)] = tail
    return ld.end - ld.start, len(blob)


def _plan_lstm(data: bytes, layer: LayerLoads, plan: _Plan) -> tuple[int, int] | str:
    """Weight-only int8 LSTM: weight_xc and weight_hc per gate row; bias_c and weight_hr stay float."""
    p = layer.params
    num_output, weight_data_size, direction = p[0], p[1], p[2]
    hidden = p[3] or num_output
    if p[8]:
        raise QuantizeError(f"{layer.name!r} (LSTM) is already int8; use the fp32 model")
    dirs = 2 if direction == 2 else 1
    expected = 3 + (1 if num_output != hidden else 0)
    if len(layer.loads) != expected or any(ld.type != 0 for ld in layer.loads):
        raise QuantizeError(f"layer {layer.name!r} (LSTM): ncnn loaded {len(layer.loads)} blob(s), expected "
                            f"{expected} tagged ones; cannot write it in int8")
    size = weight_data_size // dirs // hidden // 4
    rows = dirs * hidden * 4
    before = after = 0
    tail = b""
    for ld, width, what in ((layer.loads[0], size, "weight_xc"), (layer.loads[2], num_output, "weight_hc")):
        values = _need_floats(data, layer, ld, what)
        if values.size != rows * width:
            raise QuantizeError(f"layer {layer.name!r} (LSTM): {what} holds {values.size} values, not "
                                f"{rows} x {width}")
        scales = _row_scales(values.reshape(rows, width))
        blob = _lazy_int8(data, ld, scales, rows)
        plan.replace[id(ld)] = blob
        tail += _raw(scales)
        before += ld.end - ld.start
        after += len(blob)
    plan.after[id(layer)] = tail
    return before, after


def _plan_embed(data: bytes, layer: LayerLoads, plan: _Plan) -> tuple[int, int]:
    """Weight-only int8 Embed (a decoder's): one scale for the table, bias kept, the scale after."""
    p = layer.params
    if p[18]:
        raise QuantizeError(f"{layer.name!r} (Embed) is already int8; use the fp32 model")
    expected = [0, 1] if p[2] else [0]
    if [ld.type for ld in layer.loads] != expected:
        raise QuantizeError(f"layer {layer.name!r} (Embed): ncnn loaded blobs of types "
                            f"{[ld.type for ld in layer.loads]}, expected {expected}; cannot write it in int8")
    ld = layer.loads[0]
    values = _need_floats(data, layer, ld, "weight")
    scale = _row_scales(values.reshape(1, -1))
    blob = _lazy_int8(data, ld, scale, 1)
    plan.replace[id(ld)] = blob
    plan.after[id(layer)] = _raw(scale)
    return ld.end - ld.start, len(blob)


class Quantizer:
    """One float model read once (ncnn's own loads recorded), quantized as often as wanted: the whole model,
    the whole model with some layers kept float (mixed precision), or a single layer alone (sensitivity).

    The planned bytes are what ``quantize`` writes; nothing is written here."""

    def __init__(self, param: Path, binary: Path, table: ScaleTable, *, dynamic: tuple[str, ...] = DYNAMIC,
                 data: bytes | None = None):
        parsed = load_param(param)
        if parsed.model is None or not parsed.model.ok:
            raise QuantizeError(parsed.describe())
        self.model = model = parsed.model
        self.table, self.dynamic = table, dynamic
        unknown = set(dynamic) - set(DYNAMIC)
        if unknown:
            raise QuantizeError(f"the built-in quantizer has no weight-only int8 for {', '.join(sorted(unknown))}")
        self.data = data = _map(Path(binary)) if data is None else data
        try:  # where each load lies, from ncnn's own layers (the weights are read below, once)
            self.layers, consumed = record_extents(param, data)
            if isinstance(data, mmap.mmap):
                self._release(0, len(data))  # the tags' pages
        except LayoutError as exc:
            raise QuantizeError(str(exc)) from None
        if consumed != len(data):
            raise QuantizeError(f"{binary}: ncnn reads {consumed} of its {len(data)} bytes; the file does not match "
                                f"{param}")
        unsupported = [l for l in model.layers if l.name in table.activations and l.type not in SUPPORTED]
        if unsupported:
            l = unsupported[0]
            raise QuantizeError(f"layer {l.name!r} ({l.type}) has a table entry but the built-in quantizer cannot "
                                f"write {l.type} in int8; drop its lines from the table to keep it in float")
        foreign = [n for n in table.activations if model.layer_named(n) is None]
        if foreign and len(foreign) == len(table.activations):
            raise QuantizeError(f"the scale table names none of {param}'s layers (e.g. {foreign[0]!r}); is it "
                                "another model's table? Calibrate this model")
        self.table_notes = [f"the scale table names {len(foreign)} layer(s) this model does not have (e.g. "
                            f"{foreign[0]!r}); they were ignored — was the table made for another model?"] if foreign else []
        by_name = {l.name: l for l in self.layers}
        for name in table.activations:
            if name not in by_name and model.layer_named(name) is not None:
                raise QuantizeError(f"layer {name!r}: has a table entry but ncnn loaded no weights for it")

    def render(self, *, keep_float=frozenset(), only=None, fp16: bool = True) -> tuple[bytes, bytearray, QuantizeReport]:
        """(param bytes, bin bytes, report). ``keep_float``: layers left float (fp16 with ``fp16``) although they
        could be int8; ``only``: when given, the only layers made int8; ``fp16``: the other tagged float weights
        written as fp16 (False keeps them exactly as read)."""
        data, table, dynamic = self.data, self.table, self.dynamic
        plan = _Plan()
        quantized, dynamic_done, kept, fp16_layers, notes, chosen = [], [], [], [], list(self.table_notes), []
        before = after = 0
        int8_keys: dict[str, int] = {}
        for layer in self.layers:
            if layer.type in ("Convolution", "ConvolutionDepthWise", "InnerProduct") and layer.params[8]:
                raise QuantizeError(f"{layer.name!r} ({layer.type}) is already int8; use the fp32 model")
            b = a = 0
            wanted = layer.name not in keep_float and (only is None or layer.name in only)
            if layer.type in SUPPORTED and layer.name in table.activations:
                if layer.name not in table.weights:
                    raise QuantizeError(f"layer {layer.name!r} ({layer.type}): the table has its input scale but "
                                        f"no '{layer.name}_param_0' weight scales")
                if wanted:
                    b, a = _plan_static(data, layer, table, plan)
                    quantized.append(layer.name)
                    int8_keys[layer.name] = INT8_KEY[layer.type]
                elif only is None:
                    chosen.append(layer.name)
            elif layer.type in dynamic and wanted:
                result = {"Gemm": _plan_gemm, "LSTM": _plan_lstm, "Embed": _plan_embed}[layer.type](data, layer, plan)
                if isinstance(result, str):
                    notes.append(f"{layer.name} ({layer.type}) kept in float: {result}")
                else:
                    b, a = result
                    dynamic_done.append(layer.name)
                    int8_keys[layer.name] = INT8_KEY[layer.type]
            elif layer.type in dynamic and only is None:
                chosen.append(layer.name)
            elif layer.type in SUPPORTED:
                kept.append(layer.name)
            before, after = before + b, after + a
            if fp16 and self._to_fp16(layer, plan):
                fp16_layers.append(layer.name)
            self._release_layer(layer)
        out = self._assemble(plan)
        report = QuantizeReport(quantized, kept, len(data), len(out), before, after, dynamic_done, fp16_layers, notes,
                                chosen)
        return self._int8_param(int8_keys), out, report

    def _int8_param(self, int8_keys: dict[str, int]) -> bytes:
        """The param with each int8 layer's key set to 2 (``8=2``, ``18=2``): all lines edited, then parsed once."""
        if not int8_keys:
            return self.model.to_bytes()
        lines = list(self.model.lines)
        for name, key in int8_keys.items():
            i = self.model.layer_named(name).line - 1
            body = re.sub(rf"\s{key}=\S+", "", lines[i].rstrip("\r\n"))
            lines[i] = f"{body} {key}={INT8_SCALE_TERM}" + _split_eol(lines[i])[1]
        return self.model.with_lines(lines).to_bytes()

    def _release(self, start: int, end: int) -> None:
        """Unmap the pages of [start, end) of a mapped .bin once read: they stay in the page cache and come back if
        read again, but no longer count towards this process's memory (a published-size fp32 encoder: 230 MB)."""
        advise = getattr(mmap, "MADV_DONTNEED", None)
        if not isinstance(self.data, mmap.mmap) or advise is None:
            return
        start = start // mmap.PAGESIZE * mmap.PAGESIZE
        end = min(len(self.data), -(-end // mmap.PAGESIZE) * mmap.PAGESIZE)
        if end > start:
            try:
                self.data.madvise(advise, start, end - start)
            except (OSError, ValueError):
                pass

    def _release_layer(self, layer: LayerLoads) -> None:
        if layer.loads:
            self._release(layer.loads[0].start, layer.loads[-1].end)

    def _to_fp16(self, layer: LayerLoads, plan: _Plan) -> bool:
        converted = False
        data = self.data
        for ld in layer.loads:
            if id(ld) in plan.replace:
                continue
            values = _floats(data, ld)
            if values is None or data[ld.start:ld.start + 4] == FP16_TAG or not _fp16_fits(values):
                continue
            plan.replace[id(ld)] = _Blob(4 + 2 * ld.w + (-2 * ld.w % 4),
                                         lambda ld=ld: _fp16_bytes(_floats(data, ld)))
            converted = True
        return converted

    def _assemble(self, plan: _Plan) -> bytearray:
        """The new .bin, allocated once at its final size; each planned blob is made when its turn comes, and the
        mapped input's pages are released behind the copy."""
        data = memoryview(self.data)  # slices without copies: the model's bytes are copied once, into the result
        pieces: list = []  # (the next input offset once this piece is written, bytes or a _Blob)
        pos = 0
        for layer in self.layers:
            for ld in layer.loads:
                if id(ld) in plan.replace:
                    pieces += ((ld.start, data[pos:ld.start]), (ld.end, plan.replace[id(ld)]))
                    pos = ld.end
            if id(layer) in plan.after:  # the scales ncnn reads right after the layer's last load
                end = layer.loads[-1].end
                pieces += ((end, data[pos:end]), (end, plan.after[id(layer)]))
                pos = end
        pieces.append((len(data), data[pos:]))
        out = bytearray(sum(len(p) for _, p in pieces))
        at = released = 0
        for upto, piece in pieces:
            if isinstance(piece, _Blob):
                made = piece.make()
                if len(made) != piece.size:
                    raise RuntimeError(f"planned {piece.size} bytes, made {len(made)}")
                piece = made
            out[at:at + len(piece)] = piece
            at += len(piece)
            if upto - released >= 1 << 20:
                self._release(released, upto)
                released = upto
        return out


def quantize(param: Path, binary: Path, table: ScaleTable, out_param: Path, out_bin: Path, *,
             dynamic: tuple[str, ...] = DYNAMIC, fp16: bool = True, keep_float=frozenset()) -> QuantizeReport:
    """Write the int8 param/bin pair; the originals are only read.

    ``dynamic``: the weight-only types to quantize (Gemm, LSTM, Embed); ``fp16``: write the remaining tagged
    float weights as fp16; ``keep_float``: layers to leave float (mixed precision).
    """
    quantizer = Quantizer(param, binary, table, dynamic=dynamic)
    param_bytes, new_bytes, report = quantizer.render(keep_float=frozenset(keep_float), fp16=fp16)
    del quantizer  # the fp32 input is no longer needed: free it before the check loads the output
    write_checked(param_bytes, new_bytes, out_param, out_bin)
    return report


def write_checked(param_bytes: bytes, bin_bytes: bytes | bytearray, out_param: Path, out_bin: Path) -> None:
    """ncnn must consume every byte of the pair before it replaces the old pair (atomically, together)."""
    _verify(param_bytes, bin_bytes, out_param)
    atomic_write_pair(out_param, param_bytes, out_bin, bin_bytes)  # never a new .bin beside an old .param


def _verify(param_bytes: bytes, bin_bytes: bytes | bytearray, out_param: Path) -> None:
    """Load what is about to be written through ncnn's own layers and ModelBin and check every byte is consumed
    (layer by layer, each layer's weights dropped once loaded, so the check costs one layer's memory; nothing keeps
    the bytes once checked, unlike core.ncnn.bin_layout.record_loads)."""
    import tempfile

    with tempfile.NamedTemporaryFile("wb", suffix=".param", dir=Path(out_param).parent, delete=True) as tmp:
        tmp.write(param_bytes)
        tmp.flush()
        try:
            _, consumed = record_extents(Path(tmp.name), bin_bytes, read_weights=True)
        except LayoutError as exc:
            raise QuantizeError(f"{out_param}: the int8 model would not load ({exc}); nothing was written") from None
        if consumed != len(bin_bytes):
            raise QuantizeError(f"{out_param}: the int8 weights would not load exactly (read {consumed} of "
                                f"{len(bin_bytes)} bytes); nothing was written")
