"""What each ncnn layer needs from its line in the ``.param`` before ncnn can run it.

A graph can load and still be unrunnable: ncnn's layers read their parameters with
defaults and trust them in ``forward``. A Slice written without its slices array
(pnnx's "unbind along batch axis 0 is not supported") loads, then its forward
walks a NULL array and the process dies; a Reshape with no shape gives an empty
blob; a BinaryOp that is not marked as taking a scalar reads a second input it
was never given. These rules were worked out by reading ncnn's ``load_param`` and
``forward`` of each layer (src/layer/*.cpp); they are checked on every final graph
(the rewrite step refuses, ``doctor`` reports) so that no model is called ready
that ncnn cannot run. Only the ``.param`` text is read; nothing here imports ncnn.
"""
from __future__ import annotations

from dataclasses import dataclass

from core.ncnn.param import Layer, ParamFile

ANY = None

# type -> (min bottoms, max bottoms, min tops, max tops); ANY = no upper bound
_SINGLE = (1, 1, 1, 1)
BLOB_COUNTS: dict[str, tuple[int, int | None, int, int | None]] = {
    "Input": (0, 0, 1, 1), "MemoryData": (0, 0, 1, 1), "SherpaMetaData": (0, 0, 0, 0),
    "Split": (1, 1, 1, ANY), "Slice": (1, 1, 1, ANY), "Concat": (1, ANY, 1, 1), "Eltwise": (1, ANY, 1, 1),
    "Crop": (1, 2, 1, 1), "Reshape": (1, ANY, 1, 1), "Tile": (1, 2, 1, 1), "Interp": (1, 2, 1, 1),
    "Gemm": (1, 3, 1, 1), "MatMul": (2, 2, 1, 1), "LSTM": (1, 3, 1, 3), "GRU": (1, 2, 1, 2), "RNN": (1, 2, 1, 2),
    "Embed": _SINGLE, "Packing": _SINGLE, "Quantize": _SINGLE, "Dequantize": _SINGLE, "Requantize": _SINGLE,
    **{t: _SINGLE for t in (
        "AbsVal BatchNorm Bias BNLL Cast Clip Convolution Convolution1D ConvolutionDepthWise ConvolutionDepthWise1D "
        "Deconvolution Deconvolution1D DeconvolutionDepthWise DeconvolutionDepthWise1D Dropout ELU Exp ExpandDims "
        "Flatten Flip GELU GLU GroupNorm HardSigmoid HardSwish InnerProduct InstanceNorm LayerNorm Log LRN Mish "
        "Normalize Padding Permute Pooling Pooling1D Power PReLU ReLU Reduction Sigmoid Softmax Squeeze Swish TanH "
        "Threshold UnaryOp CumulativeSum").split()},
}

# type -> (parameter id, what it is) that must be a positive whole number (weights are sized by them)
_POSITIVE = {
    "InnerProduct": ((0, "num_output"), (2, "weight_data_size")),
    "Convolution1D": ((0, "num_output"), (1, "kernel_w"), (6, "weight_data_size")),
    "Convolution": ((0, "num_output"), (1, "kernel_w"), (6, "weight_data_size")),
    "ConvolutionDepthWise1D": ((0, "num_output"), (1, "kernel_w"), (6, "weight_data_size"), (7, "group")),
    "Embed": ((0, "num_output"), (1, "input_dim"), (3, "weight_data_size")),
    "LSTM": ((0, "num_output"), (1, "weight_data_size")),
    "GRU": ((0, "num_output"), (1, "weight_data_size")),
}


@dataclass(frozen=True)
class LayerProblem:
    line: int
    name: str
    type: str
    message: str  # what is missing and what ncnn does with it

    def __str__(self) -> str:
        return f"line {self.line}: layer {self.name!r} ({self.type}): {self.message}"

    def as_dict(self) -> dict:
        return {"line": self.line, "layer": self.name, "type": self.type, "message": self.message}


def _ints(value) -> list[int] | None:
    if isinstance(value, (list, tuple)) and all(isinstance(v, int) for v in value):
        return list(value)
    return None


def _blob_counts(layer: Layer) -> str | None:
    nb, nt = len(layer.bottoms), len(layer.tops)
    if layer.type == "BinaryOp":  # 1=1 (with_scalar): one input and the constant 2=; otherwise two inputs
        want = 1 if layer.get(1, 0) == 1 else 2
        if nb != want or nt != 1:
            how = "with_scalar (1=1): one input" if want == 1 else "without a scalar (1=0): two inputs"
            return (f"has {nb} input(s) and {nt} output(s); a BinaryOp {how} and one output "
                    + ("(its forward reads a second input that is not there)" if nb < want else ""))
        return None
    limits = BLOB_COUNTS.get(layer.type)
    if limits is None:
        return None
    lo_b, hi_b, lo_t, hi_t = limits
    if nb < lo_b or (hi_b is not None and nb > hi_b) or nt < lo_t or (hi_t is not None and nt > hi_t):
        span = lambda lo, hi: str(lo) if lo == hi else f"{lo} or more" if hi is None else f"{lo} to {hi}"  # noqa: E731
        return (f"has {nb} input(s) and {nt} output(s); ncnn's {layer.type} takes {span(lo_b, hi_b)} input(s) "
                f"and gives {span(lo_t, hi_t)} output(s)")
    return None


def _slice(layer: Layer) -> str | None:
    slices, indices = layer.param(0), layer.param(2)
    n = len(layer.tops)
    if slices is None and indices is None:
        return ("has neither a slices array (-23300=) nor indices (-23302=): ncnn's Slice walks its slices array "
                "for every output, so it reads a missing array and the process crashes (pnnx writes this when it "
                "cannot lower an unbind along the first axis)")
    if slices is not None:
        values = _ints(slices.value)
        if values is None:
            return f"its slices {slices.key}={slices.raw} is not an array of whole numbers"
        if len(values) != n:
            return (f"its slices array has {len(values)} entr{'y' if len(values) == 1 else 'ies'} for {n} output(s); "
                    "ncnn reads one per output (past the end of the array otherwise)")
        if any(v <= 0 and v != -233 for v in values):
            return f"its slices array {values} has a size that is neither positive nor -233 (the rest)"
    elif indices is not None:
        values = _ints(indices.value)
        if values is None or len(values) != n - 1:
            return f"its indices {indices.key}={indices.raw} must list {n - 1} split point(s) for {n} output(s)"
    return None


def _reshape(layer: Layer) -> str | None:
    if layer.param(6) is not None:  # a shape expression (newer ncnn) takes the sizes from other blobs
        return None
    if layer.param(0) is None:
        return "has no shape (no 0=w): ncnn has no output size and the output blob comes out empty"
    dims = [layer.get(k) for k in (0, 1, 11, 2) if layer.param(k) is not None]
    if any(not isinstance(d, int) or (d < -1 and d != -233) for d in dims):
        return f"its shape {' '.join(p.text for p in layer.params)} has a size that is not a whole number >= -1"
    if sum(d == -1 for d in dims) > 1:
        return "its shape has more than one -1 (only one size can be inferred)"
    return None


def _crop(layer: Layer) -> str | None:
    if len(layer.bottoms) == 2:  # the second input gives the size
        return None
    starts, ends, axes = layer.param(9), layer.param(10), layer.param(11)
    if starts is not None or ends is not None:
        s, e = _ints(starts.value) if starts else None, _ints(ends.value) if ends else None
        if s is None or e is None:
            return ("gives " + ("starts (-23309=) without ends (-23310=)" if e is None else "ends (-23310=) without "
                                "starts (-23309=)") + ": ncnn reads both arrays for every axis cropped")
        if len(s) != len(e):
            return f"has {len(s)} start(s) but {len(e)} end(s); ncnn reads one of each per axis"
        a = _ints(axes.value) if axes else None
        if axes is not None and (a is None or len(a) != len(s)):
            return f"has {len(s)} start(s) but axes {axes.raw}; ncnn reads one start and end per axis"
        return None
    if not any(isinstance(layer.get(k), int) and layer.get(k) != 0 for k in (0, 1, 2, 3, 4, 5, 6, 7, 8, 13, 14, 15)):
        return ("has no range (no offsets, sizes, or starts/ends) and no reference input: ncnn copies the whole blob, "
                "so the crop the graph meant is lost")
    return None


def _memorydata(layer: Layer) -> str | None:
    dims = {k: layer.get(k) for k in (0, 1, 11, 2) if layer.param(k) is not None}
    if not dims or not isinstance(dims.get(0), int) or dims.get(0, 0) <= 0:
        return ("has no size (0=w missing or not positive): ncnn reads nothing from the .bin for it and hands out "
                "one uninitialised value")
    if any(not isinstance(v, int) or v < 0 for v in dims.values()):
        return f"has a size that is not a whole number >= 0 ({' '.join(p.text for p in layer.params)})"
    return None


def _positive(layer: Layer) -> str | None:
    for pid, what in _POSITIVE.get(layer.type, ()):
        v = layer.get(pid)
        if not isinstance(v, int) or v <= 0:
            return f"{what} ({pid}=) is {v if v is not None else 'missing'}; ncnn sizes the layer's weights by it"
    return None


_RULES = {"Slice": _slice, "Reshape": _reshape, "Crop": _crop, "MemoryData": _memorydata}


def check_layer(layer: Layer) -> list[str]:
    """Every requirement ``layer`` misses, one sentence each."""
    found = [m for m in (_blob_counts(layer), _RULES.get(layer.type, lambda _x: None)(layer), _positive(layer)) if m]
    return found


def check_layers(model: ParamFile) -> list[LayerProblem]:
    """Every layer of ``model`` against what its ncnn implementation needs; [] when all are runnable."""
    problems: list[LayerProblem] = []
    produced: set[str] = set()
    for layer in model.layers:
        for message in check_layer(layer):
            problems.append(LayerProblem(layer.line, layer.name, layer.type, message))
        for b in layer.bottoms:
            if b not in produced:
                problems.append(LayerProblem(layer.line, layer.name, layer.type,
                                             f"reads blob {b!r} that no earlier layer produces; ncnn has nothing to "
                                             "compute it from"))
        produced.update(layer.tops)
    return problems


def describe(problems: list[LayerProblem], source: str | None = None, limit: int = 3) -> str:
    """One sentence for a refusal: the first problems by line, and how many more."""
    where = f"{source}: " if source else ""
    head = "; ".join(str(p) for p in problems[:limit])
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return f"{where}{len(problems)} layer(s) ncnn cannot run as written: {head}{more}"
