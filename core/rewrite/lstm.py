"""Rewrites for icefall's LSTM encoder as the pnnx wheel converts it.

- ``lengths-cast``: ``Tensor.to`` casting the output lengths (``floor(((len - 3) / 2 - 1) / 2)``) to
  ``torch.long``. ncnn has no integer tensors, and the value is already a whole number (the layer before it
  is a ``floor``/``ceil``/``round``/``trunc``), so the cast is the identity: the layer is removed and its
  producer writes the output blob directly. sherpa-ncnn never reads that output (``out1``) anyway.
- ``static-time-reshape``: icefall traces the LSTM encoder with 100 feature frames, but sherpa-ncnn feeds 9
  frames per chunk (1 frame after subsampling). pnnx bakes the traced time length into the ``Reshape`` after
  the convolutional subsampling (``0=2304 1=23``), so a 9-frame chunk would be reshaped to 23 frames, 22 of
  them read past the end of the buffer. The time dimension becomes ``-1`` (inferred). Matched only as
  ``Reshape 0=X 1=T`` on the feature path whose only consumer is a ``Gemm`` with a non-constant A and ``7=T``
  (pnnx's traced M), and only when the runtime's chunk differs from the traced one.
"""
from __future__ import annotations

import re
from pathlib import Path

from core.ncnn.param import Layer, ParamFile, format_layer_line, replace_header
from core.rewrite.graph import consumers, eol_of, producers, where
from core.rewrite.rule import Edit, Refuse, RuleContext, RuleResult

# ncnn UnaryOp op types whose result is always a whole number
_INTEGER_UNARY = {2: "floor", 3: "ceil", 18: "round", 19: "trunc"}
_CAST_DTYPES = {"torch.long", "torch.int64", "torch.int", "torch.int32", "torch.int16", "torch.float",
                "torch.float32", "torch.double", "torch.float64"}
_PNNX_INPUT0_RE = re.compile(r"^pnnx\.Input\s+\S+\s+0\s+1\s+(\S+)\s+#\1=\(([0-9,]+)\)")


def _runtime_fixed_geometry(arch: str | None) -> tuple[int, int] | None:
    """(segment, offset) sherpa-ncnn's runtime fixes for ``arch`` (the architecture module says), else None."""
    from core.model.architectures import get_arch
    try:
        return get_arch(arch).runtime_fixed_geometry if arch else None
    except KeyError:
        return None


def _scalar_path_to_input(model: ParamFile, blob: str) -> list[Layer]:
    """The chain of one-input element-wise layers from an Input to ``blob``; refuses on anything else."""
    made_by = producers(model)
    chain: list[Layer] = []
    current = blob
    for _ in range(len(model.layers)):
        layer = made_by.get(current)
        if layer is None:
            raise Refuse(f"blob {current!r} has no producer")
        if layer.type == "Input":
            return chain
        elementwise = (layer.type == "UnaryOp" and len(layer.bottoms) == 1) or \
                      (layer.type == "BinaryOp" and len(layer.bottoms) == 1 and layer.get(1, 0) == 1)
        if not elementwise:
            raise Refuse(f"its input comes from {where(layer)}, not from a chain of scalar arithmetic on an Input "
                         "(a lengths path)")
        chain.append(layer)
        current = layer.bottoms[0]
    raise Refuse("the graph has a cycle")


def lengths_cast(ctx: RuleContext) -> RuleResult:
    """Tensor.to casting whole-number lengths -> removed; its producer writes the output blob."""
    model, layer = ctx.model, ctx.target
    if len(layer.bottoms) != 1 or len(layer.tops) != 1:
        raise Refuse(f"it has {len(layer.bottoms)} input(s) and {len(layer.tops)} output(s), not 1 and 1")
    readers = consumers(model)
    top, bottom = layer.tops[0], layer.bottoms[0]
    if readers.get(top):
        raise Refuse(f"its output {top!r} is read by {where(readers[top][0])}; only a cast that produces a graph "
                     "output (the lengths) is recognised")
    if len(readers.get(bottom, [])) != 1:
        raise Refuse(f"its input {bottom!r} is also read by other layers")
    attrs = ctx.pnnx_attrs.get(layer.name)
    if attrs is not None:
        dtype = attrs.get("dtype")
        if dtype not in _CAST_DTYPES:
            raise Refuse(f"pnnx's graph says it casts to {dtype!r}, not to an int or float type")
    producer = producers(model).get(bottom)
    if producer is None or producer.type != "UnaryOp" or producer.get(0, 0) not in _INTEGER_UNARY:
        what = where(producer) if producer is not None else "nothing"
        raise Refuse(f"its input comes from {what}, not from a floor/ceil/round/trunc, so the cast "
                     "could change the values")
    chain = _scalar_path_to_input(model, bottom)
    root = chain[-1].bottoms[0]  # the chain starts at the producer, so it is never empty
    new_producer = format_layer_line(producer.type, producer.name, producer.bottoms,
                                     [top if t == bottom else t for t in producer.tops],
                                     [p.text for p in producer.params])
    lines: list[str | None] = list(model.lines)
    lines[producer.line - 1] = new_producer + eol_of(lines[producer.line - 1])
    lines[layer.line - 1] = None  # the cast's line goes
    kept = [x for x in lines if x is not None]
    kept = replace_header(kept, model.header_line, model.layer_count - 1, model.blob_count - 1)
    op = _INTEGER_UNARY[producer.get(0, 0)]
    dtype = f" to {attrs['dtype']}" if attrs and attrs.get("dtype") else ""
    return RuleResult.changed([Edit(layer.name, layer.type,
                                    f"removed the cast{dtype} of {bottom!r} (a whole number: {op} of scalar "
                                    f"arithmetic on input {root!r}); {producer.name!r} now writes {top!r} directly")],
                              param_text="".join(kept))


# -- the traced time length ----------------------------------------------------------

def traced_frames(pnnx_param: str | Path | None) -> int | None:
    """The time length of the first input pnnx saw (``#0=(1,100,80)`` -> 100), or None."""
    if pnnx_param is None:
        return None
    try:
        text = Path(pnnx_param).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for text_line in text.splitlines():
        m = _PNNX_INPUT0_RE.match(text_line)
        if m:
            dims = [int(x) for x in m.group(2).split(",") if x]
            return dims[1] if len(dims) == 3 else None
    return None


def _downstream(model: ParamFile, blob: str) -> set[str]:
    seen = {blob}
    for layer in model.layers:  # layers are in topological order in a param file
        if any(b in seen for b in layer.bottoms):
            seen.update(layer.tops)
    return seen


def _static_time_reshapes(model: ParamFile) -> list[tuple[Layer, int]]:
    """(Reshape, T) pairs: Reshape 0=X 1=T on in0's path feeding only a Gemm with 4=0 and 7=T."""
    if "in0" not in model.input_names:
        return []
    feature_path = _downstream(model, "in0")
    readers = consumers(model)
    found = []
    for layer in model.layers_of_type("Reshape"):
        if layer.bottoms[0] not in feature_path or len(layer.tops) != 1:
            continue
        keys = {p.id for p in layer.params}
        t = layer.get(1)
        if keys != {0, 1} or not isinstance(t, int) or t <= 0:
            continue
        users = readers.get(layer.tops[0], [])
        if len(users) == 1 and users[0].type == "Gemm" and users[0].get(4, 0) == 0 and users[0].get(7) == t:
            found.append((layer, t))
    return found


def static_time_reshape(ctx: RuleContext) -> RuleResult:
    """Reshape 0=X 1=T with the traced chunk length T baked in -> 1=-1 (the chunk sherpa-ncnn feeds)."""
    fixed = _runtime_fixed_geometry(ctx.arch)
    if fixed is None:
        from core.model.architectures import ARCHITECTURES
        fixing = ", ".join(s.name for s in ARCHITECTURES.values() if s.runtime_fixed_geometry)
        return RuleResult.no_match(f"the runtime fixes the chunk length only for {fixing}; the architecture is "
                                   f"{ctx.arch or 'not given'}")
    segment = fixed[0]
    traced = traced_frames(ctx.pnnx_param)
    if traced == segment:
        return RuleResult.no_match(f"pnnx traced {traced} frames, the chunk sherpa-ncnn feeds")
    notes = () if traced is not None else (
        "the traced chunk length is unknown (no pnnx graph); static time lengths were found from the "
        "Reshape -> Gemm pattern alone",)
    found = _static_time_reshapes(ctx.model)
    if not found:
        return RuleResult.no_match("no Reshape 0=X 1=T feeding a Gemm with 7=T on the feature path", notes=notes)
    lines = list(ctx.model.lines)
    edits = []
    traced_text = f"{traced} frames" if traced else "a fixed chunk"
    for layer, t in found:
        params = [("1=-1" if p.id == 1 else p.text) for p in layer.params]
        eol = eol_of(lines[layer.line - 1])
        lines[layer.line - 1] = format_layer_line(layer.type, layer.name, layer.bottoms, layer.tops, params) + eol
        edits.append(Edit(layer.name, layer.type,
                          f"the traced time length {t} (pnnx traced {traced_text}; sherpa-ncnn feeds {segment}) "
                          "became -1, so the Reshape follows the chunk it is given"))
    return RuleResult.changed(edits, param_text="".join(lines), notes=notes)
