"""pnnx's own graph (``*.pnnx.param``): its operators and input shapes, and its shape-inference mix-up.

Reading: :func:`read_pnnx_ops` (operators with their attributes and shapes) and :func:`pnnx_input_shapes`, used
by the Zipformer rewrites and the crash probe. Checking: pnnx's shape-inference mix-up, caught before the ncnn
files are trusted.

pnnx (20241223 and later, when the .pt carries the traced input shapes) pairs
the values of two copies of the graph by position; a tensor constant shared
by several layers (ConvEmformer's attention scale) shifts that pairing, so
from the second layer on every shape annotation is someone else's. pnnx then
"simplifies" slices it believes are no-ops and bakes wrong sizes into Reshape
and Gemm: the encoder loads and decodes, with wrong numbers. The tell-tale is
in pnnx's own graph: element-wise operators whose output shape differs from
their input shape. That cannot happen in a correct graph, so finding one is
proof, not a guess.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# operators whose output always has their (single) input's shape
_SHAPE_PRESERVING = {
    "F.softmax", "F.log_softmax", "F.relu", "F.relu6", "F.silu", "F.sigmoid", "F.tanh", "F.gelu", "F.elu",
    "F.leaky_relu", "F.hardtanh", "F.hardswish", "F.hardsigmoid", "F.mish", "F.dropout", "torch.tanh",
    "torch.sigmoid", "torch.exp", "torch.log", "torch.abs", "torch.neg", "torch.sqrt", "torch.clamp",
    "nn.ReLU", "nn.Tanh", "nn.Sigmoid", "nn.SiLU", "nn.GELU", "nn.Softmax", "nn.Dropout", "nn.Identity",
}
# a pnnx.Expression of one input and a constant: mul(@0,0.166666672), add(@0,1.0e+00), ...
_SCALAR_EXPR = re.compile(r"^expr=(mul|add|sub|div|pow)\((@0,[-+0-9.eE]+|[-+0-9.eE]+,@0)\)$")
_SHAPE = re.compile(r"^#([^=]+)=\(([0-9?,]*)\)")


@dataclass
class ShapeMismatch:
    line: int
    op: str
    name: str
    shape_in: str
    shape_out: str

    def __str__(self) -> str:
        return (f"line {self.line}: {self.op} {self.name} turns ({self.shape_in}) into ({self.shape_out}), which an "
                "element-wise operator cannot")


def shape_mismatches(pnnx_param: str | Path) -> list[ShapeMismatch]:
    """Element-wise operators in pnnx's graph whose annotated output shape differs from the input's."""
    try:
        text = Path(pnnx_param).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if len(parts) < 6 or parts[2] != "1" or parts[3] != "1":
            continue
        op, name, bottom, top = parts[0], parts[1], parts[4], parts[5]
        if op not in _SHAPE_PRESERVING and not (op == "pnnx.Expression" and any(
                _SCALAR_EXPR.match(p) for p in parts[6:])):
            continue
        shapes = {}
        for token in parts[6:]:
            m = _SHAPE.match(token)
            if m:
                shapes[m.group(1)] = m.group(2)
        a, b = shapes.get(bottom), shapes.get(top)
        if a is not None and b is not None and "?" not in a + b and a != b:
            found.append(ShapeMismatch(number, op, name, a, b))
    return found


def describe(pnnx_param: str | Path | None, mismatches: list[ShapeMismatch]) -> str:
    """One sentence; starts with the file's path unless ``pnnx_param`` is None (the caller names the file)."""
    first = mismatches[0]
    where = f"{pnnx_param}: " if pnnx_param is not None else ""
    return (f"{where}pnnx's own graph is inconsistent ({len(mismatches)} element-wise operator(s) change "
            f"shape; first at {first}): pnnx's shape inference mis-paired its values (a pnnx bug triggered by a "
            "constant shared across layers), so the ncnn encoder it wrote computes wrong numbers even though it "
            "loads")


CONVERT_HINT = ("convert the traced *_jit_trace-pnnx.pt again: `sherpa-ncnn-wizard run` from the checkpoint does "
                "it around this bug (it retries with pnnx 20241223 on a copy of the .pt without traced_inputs.pkl "
                "and traced_inputs/, which skips pnnx's shape inference); by hand, delete those entries from the "
                ".pt zip and run that pnnx")


_SHAPE_RE = re.compile(r"#([^=\s]+)=\(([0-9,]*)\)")


@dataclass(frozen=True)
class PnnxOp:
    """One operator line of pnnx's graph. ``shapes``: blob -> torch shape (blobs whose shape pnnx left dynamic,
    ``?``, have none); ``attrs``: its ``key=value`` attributes (``@data`` kept for constants)."""

    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    attrs: dict
    shapes: dict
    line: int


def read_pnnx_ops(path: str | Path | None) -> list[PnnxOp]:
    """Every operator of pnnx's ``*.pnnx.param`` in order ([] when absent or unreadable): the one reader of it."""
    if path is None:
        return []
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    ops = []
    for number, line in enumerate(text.splitlines(), start=1):
        tok = line.split()
        if number <= 2 or len(tok) < 4 or not tok[2].isdigit() or not tok[3].isdigit():
            continue
        n_in, n_out = int(tok[2]), int(tok[3])
        ins, outs = tok[4:4 + n_in], tok[4 + n_in:4 + n_in + n_out]
        attrs, shapes = {}, {}
        for t in tok[4 + n_in + n_out:]:
            m = _SHAPE_RE.match(t)
            if m:
                shapes[m.group(1)] = tuple(int(x) for x in m.group(2).split(",") if x)
            elif t.startswith("@data="):
                attrs["@data"] = t[len("@data="):]
            elif "=" in t and not t.startswith(("$", "@", "#")):
                k, _, v = t.partition("=")
                attrs[k] = v
        ops.append(PnnxOp(tok[0], tok[1], tuple(ins), tuple(outs), attrs, shapes, number))
    return ops


def attributes_by_name(ops: list[PnnxOp]) -> dict[str, dict[str, str]]:
    """layer name -> its attributes (the ones the ncnn param drops), constants' data left out."""
    return {op.name: {k: v for k, v in op.attrs.items() if not k.startswith("@")} for op in ops}


def _ints(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    body = text.strip().strip("()[]")
    try:
        return tuple(int(x) for x in body.split(",") if x.strip())
    except ValueError:
        return None


def _in_shape(op: PnnxOp) -> tuple[int, ...] | None:
    return op.shapes.get(op.inputs[0]) if op.inputs else None


def pnnx_input_shapes(ops: list[PnnxOp]) -> dict[str, tuple[int, ...]]:
    """``inK`` -> torch shape of the K-th ``pnnx.Input`` (inputs whose shape pnnx did not record are left out)."""
    out = {}
    for k, op in enumerate(o for o in ops if o.type == "pnnx.Input"):
        if op.outputs and op.outputs[0] in op.shapes:
            out[f"in{k}"] = op.shapes[op.outputs[0]]
    return out


def state_layout(shape: tuple[int, ...]) -> tuple[int, ...]:
    """The ncnn layout sherpa-ncnn feeds a state: the batch axis (innermost size-1 axis of the first three) dropped."""
    for axis in range(min(len(shape) - 1, 2), -1, -1):
        if shape[axis] == 1:
            return shape[:axis] + shape[axis + 1:]
    return shape
