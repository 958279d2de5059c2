"""Rewrites for icefall's streaming Zipformer (v1) as the pnnx wheel converts it.

The icefall pnnx fork turned four Zipformer operators into sherpa-ncnn's own layers; the pnnx
wheel leaves them as layers sherpa-ncnn 2.1.15 does not have, and mis-lowers the handling of the
stacked per-layer states. Every rewrite here uses plain ncnn layers the runtime has and changes the
``.param`` only (no weights):

- ``cumsum-scan`` (``CumulativeSum 0=a``): an inclusive prefix sum along axis ``a`` of length T (T from
  pnnx's graph) as ceil(log2 T) doubling steps: ``y += concat(0 * y[:s], y[:T-s])`` for s = 1, 2, 4, ...
- ``rel-shift`` (``torch.as_strided``): the relative-position shift, out[h,i,j] = x_h[off + i*s + j]
  (size/stride from pnnx's graph), as Reshape (one row per head) -> Crop [off, off+S*s) -> Reshape
  (S, s) -> Crop columns [0, K).
- ``tile-concat`` (``Tile`` repeating one axis k times): a Split into k copies and a Concat along it.
- ``unbind-states`` (a parameterless ``Slice`` on a state input): a Slice along the layer axis into
  equal parts, each reshaped to the layer's state (the layer axis dropped).
- ``state-output-layout`` (the Reshape or ``Concat stack_N`` writing a state output): the stacked state
  gets the layout sherpa-ncnn feeds back (zipformer-model.cc: cached_len (w=1, h=L), cached_avg
  (w=C, h=1, c=L) as RunEncoder reshapes them, the others as the matching input).
- ``batch-unsqueeze`` (an ``ExpandDims`` pnnx wrote for an unsqueeze of the batch axis): a Reshape that
  keeps the blob's rank (the identity in pnnx's batch-dropped layout).

The first three are layer rules (one per layer type the runtime lacks, each rewriting every layer of its
type at once), the last three whole-graph rules that run only on a Zipformer graph; the order is the
registry's (core/rewrite/registry.py).
"""
from __future__ import annotations

from core.ncnn.param import Layer, ParamFile
from core.pnnx.graph import _in_shape, _ints, pnnx_input_shapes, state_layout
from core.rewrite.graph import (
    Builder,
    consumers,
    crop,
    line,
    mislowered_unbinds,
    ops_of,
    pnnx_ops,
    producers,
    reshape,
)
from core.rewrite.rule import Edit, Refuse, RuleContext, RuleResult

NOT_ZIPFORMER = "not a Zipformer graph (state inputs are not 7 per encoder stack, or no Concat stack_N)"


def _changed(b: Builder, changes: list) -> RuleResult:
    """The one result shape: every changed layer with its sentence, and the whole new file."""
    edits = [Edit(layer.name, layer.type, what) for layer, what in changes]
    return RuleResult.changed(edits, param_text=b.text())


# -- cumsum ----------------------------------------------------------------------------

def cumsum_scan(ctx: RuleContext) -> RuleResult:
    """Every ``CumulativeSum`` -> a log-depth scan of Split/Crop/BinaryOp/Concat."""
    model, pnnx_attrs = ctx.model, ctx.pnnx_attrs
    layers = model.layers_of_type("CumulativeSum")
    torch_ops = ops_of(pnnx_ops(pnnx_attrs), "torch.cumsum")
    if len(torch_ops) != len(layers):
        raise Refuse(f"the ncnn graph has {len(layers)} CumulativeSum but pnnx's graph {len(torch_ops)} torch.cumsum")
    b = Builder(model)
    changes = []
    for layer, op in zip(layers, torch_ops):
        keys = {p.id for p in layer.params}
        if len(layer.bottoms) != 1 or len(layer.tops) != 1 or not keys <= {0}:
            raise Refuse(f"{layer.name!r} is not a one-input CumulativeSum with only an axis (0=)")
        axis = layer.get(0, 0)
        dim, shape = _ints(op.attrs.get("dim")), _in_shape(op)
        if not isinstance(axis, int) or axis < 0 or not dim or shape is None or not -len(shape) <= dim[0] < len(shape):
            raise Refuse(f"{layer.name!r}: axis {axis!r} / pnnx {op.name} dim={op.attrs.get('dim')} "
                         f"shape={shape} not understood")
        t = shape[dim[0]]
        out: list[str] = []
        cur = layer.bottoms[0]
        s = 1
        steps = 0
        while s < t:
            c1, c2, c3 = (b.fresh(f"{layer.name}_s{s}") for _ in range(3))
            head, zero, tail, shifted = (b.fresh(f"{layer.name}_s{s}") for _ in range(4))
            nxt = layer.tops[0] if s * 2 >= t else b.fresh(f"{layer.name}_s{s}")
            p = f"{layer.name}_s{s}"
            out += [line("Split", f"{p}_split", [cur], [c1, c2, c3]),
                    crop(f"{p}_head", c1, head, 0, s, axis),
                    line("BinaryOp", f"{p}_zero", [head], [zero], ["0=2", "1=1", "2=0.0"]),
                    crop(f"{p}_tail", c2, tail, 0, t - s, axis),
                    line("Concat", f"{p}_shift", [zero, tail], [shifted], [f"0={axis}"]),
                    line("BinaryOp", f"{p}_add", [c3, shifted], [nxt], ["0=0"])]
            cur, s, steps = nxt, s * 2, steps + 1
        if t <= 1:  # a cumsum over one element is the identity
            out = [line("BinaryOp", f"{layer.name}_id", [cur], [layer.tops[0]], ["0=0", "1=1", "2=0.0"])]
        b.replace(layer, out)
        changes.append((layer, f"cumsum over ncnn axis {axis} of length {t} (pnnx {op.name}) became a "
                               f"{steps}-step doubling scan of Crop/Concat/BinaryOp adds: same sums, plain layers"))
    return _changed(b, changes)


# -- as_strided (relative-position shift) ------------------------------------------------------

def rel_shift(ctx: RuleContext) -> RuleResult:
    """Every ``torch.as_strided`` (the relative-position shift) -> Reshape, Crop, Reshape, Crop."""
    model, pnnx_attrs = ctx.model, ctx.pnnx_attrs
    ops = {o.name: o for o in ops_of(pnnx_ops(pnnx_attrs), "torch.as_strided")}
    b = Builder(model)
    changes = []
    for layer in model.layers_of_type("torch.as_strided"):
        op = ops.get(layer.name)
        if op is None:
            raise Refuse(f"{layer.name!r} is not in pnnx's graph, so its size and stride are unknown")
        if len(layer.bottoms) != 1 or len(layer.tops) != 1 or layer.params:
            raise Refuse(f"{layer.name!r} is not a one-input, parameterless as_strided")
        size, stride, shape = _ints(op.attrs.get("size")), _ints(op.attrs.get("stride")), _in_shape(op)
        if size is None or stride is None or shape is None or not len(size) == len(stride) == len(shape) == 3:
            raise Refuse(f"{layer.name!r}: size={op.attrs.get('size')} stride={op.attrs.get('stride')} "
                         f"input {shape}: only 3-D (heads, time, positions) is recognised")
        heads, rows, width = shape
        n_heads, n_rows, n_cols = size
        s = stride[1]
        offset_text = op.attrs.get("storage_offset")
        if offset_text is not None:
            off = _ints(offset_text)
            off = off[0] if off else None
            source = "pnnx's storage_offset"
        elif width == n_cols + n_rows - 1 and s == width - 1:
            # pnnx drops the offset; icefall's rel_shift uses stride(-1) * (seq_len - 1)
            off = n_rows - 1
            source = "icefall's rel_shift offset (seq_len - 1; pnnx does not record it)"
        else:
            raise Refuse(f"{layer.name!r}: no storage_offset and not icefall's relative shift "
                         f"(input {shape}, size {size}, stride {stride})")
        ok = (n_heads == heads and stride[0] == rows * width and stride[2] == 1 and off is not None and off >= 0
              and s >= n_cols and off + n_rows * s <= rows * width)
        if not ok:
            raise Refuse(f"{layer.name!r}: size {size}, stride {stride}, offset {off} on {shape} is not a per-head "
                         "row shift")
        flat, window, grid = (b.fresh(layer.name) for _ in range(3))
        p = layer.name
        b.replace(layer, [reshape(f"{p}_flat", layer.bottoms[0], flat, (heads, rows * width)),
                          crop(f"{p}_window", flat, window, off, off + n_rows * s, 1),
                          reshape(f"{p}_rows", window, grid, (heads, n_rows, s)),
                          crop(f"{p}_cols", grid, layer.tops[0], 0, n_cols, 2)])
        changes.append((layer, f"as_strided size {size} stride {stride} offset {off} ({source}) on {shape} became "
                               f"Reshape -> Crop [{off},{off + n_rows * s}) -> Reshape ({n_rows},{s}) -> Crop "
                               f"columns [0,{n_cols}): the same elements"))
    return _changed(b, changes)


# -- Tile ----------------------------------------------------------------------------------

_TILE_OPS = ("Tensor.expand", "Tensor.repeat", "torch.tile", "Tensor.expand_as")


def _drop_axis(shape, axis):
    return tuple(shape[:axis]) + tuple(shape[axis + 1:])


def tile_concat(ctx: RuleContext) -> RuleResult:
    """Every ``Tile`` -> Reshape to the layout pnnx meant + Split into k copies + Concat along the repeated axis.

    The shapes come from pnnx's op (Tensor.expand/repeat, matched in order): the torch input and output
    with the batch axis (a size-1 axis of both that leaves as many axes as the repeats array) removed. A
    MemoryData added right after (the upsampling bias) is given the same batch-dropped layout.
    """
    model, pnnx_attrs = ctx.model, ctx.pnnx_attrs
    layers = model.layers_of_type("Tile")
    ops = [o for o in pnnx_ops(pnnx_attrs) if o.type in _TILE_OPS]
    if len(ops) != len(layers):
        raise Refuse(f"the ncnn graph has {len(layers)} Tile but pnnx's graph {len(ops)} expand/repeat ops")
    mems = {o.name: o for o in pnnx_ops(pnnx_attrs) if o.type == "pnnx.Attribute"}
    readers = consumers(model)
    made_by = producers(model)
    b = Builder(model)
    changes = []
    for layer, op in zip(layers, ops):
        keys = {p.id for p in layer.params}
        reps = layer.get(2)
        if len(layer.bottoms) != 1 or len(layer.tops) != 1 or keys != {2} or not isinstance(reps, (list, tuple)):
            raise Refuse(f"{layer.name!r} is not a one-input Tile with only a repeats array (2=)")
        reps = [int(r) for r in reps]
        src, dst = _in_shape(op), op.shapes.get(op.outputs[0]) if op.outputs else None
        if src is None or dst is None or len(src) != len(dst):
            raise Refuse(f"{layer.name!r}: pnnx {op.name} has no usable shapes")
        batch = [a for a in range(len(src)) if src[a] == 1 and dst[a] == 1 and len(src) - 1 == len(reps)]
        if not batch:
            raise Refuse(f"{layer.name!r}: {src} -> {dst} has no batch axis to drop for repeats {reps}")
        n_in, n_out = _drop_axis(src, batch[-1]), _drop_axis(dst, batch[-1])
        moved = [a for a, r in enumerate(reps) if r != 1]
        if (len(moved) != 1 or not 1 <= len(reps) <= 3
                or any(n_out[a] != n_in[a] * reps[a] for a in range(len(reps)))):
            raise Refuse(f"{layer.name!r}: repeats {reps} do not turn {n_in} into {n_out} along one axis")
        axis, k = moved[0], reps[moved[0]]
        shaped = b.fresh(layer.name)
        copies = [b.fresh(layer.name) for _ in range(k)]
        b.replace(layer, [reshape(f"{layer.name}_layout", layer.bottoms[0], shaped, n_in),
                          line("Split", f"{layer.name}_copies", [shaped], copies),
                          line("Concat", f"{layer.name}_concat", copies, layer.tops, [f"0={axis}"])])
        what = (f"Tile repeats {reps} (pnnx {op.name}: {src} -> {dst}) became a Reshape to {n_in}, {k} copies "
                f"(Split) and a Concat along ncnn axis {axis} -> {n_out}")
        for user in readers.get(layer.tops[0], []):
            if user.type != "BinaryOp" or len(user.bottoms) != 2:
                continue
            other = made_by.get(user.bottoms[1] if user.bottoms[0] == layer.tops[0] else user.bottoms[0])
            mem = mems.get(other.name) if other is not None and other.type == "MemoryData" else None
            shape = mem.shapes.get(mem.outputs[0]) if mem and mem.outputs else None
            if shape is None or len(shape) >= len(dst):
                continue
            aligned = batch[-1] - (len(dst) - len(shape))  # the batch axis, right-aligned onto the constant
            if aligned < 0 or shape[aligned] != 1:
                continue
            dims = _drop_axis(shape, aligned)
            dims = (1,) * (len(n_out) - len(dims)) + dims  # same rank as the tile: ncnn broadcasts c=1 only then
            params = [f"{i}={v}" for i, v in enumerate(reversed(dims))]
            current = sorted(((p.id, p.value) for p in other.params))
            if current != sorted(enumerate(reversed(dims))):
                b.replace(other, [line("MemoryData", other.name, [], other.tops, params)])
                what += f"; the constant {other.name!r} {shape} it is added to gets the same layout {dims}"
        changes.append((layer, what))
    return _changed(b, changes)


# -- unbind / stack of the per-layer states ----------------------------------------------------------

def unbind_states(ctx: RuleContext) -> RuleResult:
    """Parameterless Slices on state inputs -> Slice along the layer axis + Reshape dropping it."""
    model, pnnx_attrs = ctx.model, ctx.pnnx_attrs
    if not is_zipformer(model):
        return RuleResult.no_match(NOT_ZIPFORMER)
    bad = mislowered_unbinds(model)
    if not bad:
        return RuleResult.no_match("no parameterless Slice")
    if not pnnx_attrs.get("@ops"):
        raise Refuse(f"layer {bad[0].name!r} (Slice) at line {bad[0].line} and {len(bad) - 1} more: a Slice without "
                     "parameters; pnnx's own graph (*.pnnx.param) is needed for the state shapes and was not available")
    shapes = pnnx_input_shapes(pnnx_ops(pnnx_attrs))
    inputs = set(model.input_names)
    b = Builder(model)
    changes = []
    for layer in bad:
        src = layer.bottoms[0] if len(layer.bottoms) == 1 else None
        shape = shapes.get(src) if src in inputs else None
        if shape is None:
            raise Refuse(f"{layer.name!r} does not slice a graph input pnnx recorded a shape for")
        n = len(layer.tops)
        if len(shape) < 2 or shape[0] != n or shape[1] != 1:
            raise Refuse(f"{layer.name!r}: input {src} is {shape}; only (layers, 1, ...) split into {n} is recognised")
        piece = state_layout(shape)[1:]
        params = [f"-23300={n}," + ",".join(["-233"] * n), "1=0"]
        if n == 1:  # a one-layer stack: the unbind is the identity on the data, only the layer axis goes
            _one_layer_unbind(layer, src, shape, piece, model, b, changes)
            continue
        if not piece:  # (layers, 1) -> layers pieces of one element each, already 1-D
            b.replace(layer, [line("Slice", layer.name, layer.bottoms, layer.tops, params)])
            fixed = _scalar_unsqueezes(model, layer.tops, b)
            what = "1-D pieces of one element"
            if fixed:
                what += (f"; pnnx lowered them as rank-0 scalars, so the {len(fixed)} ExpandDims on them "
                         f"({', '.join(fixed)}) keep the one element as 1-D (Reshape 0=1)")
        else:
            raw = [b.fresh(layer.name) for _ in range(n)]
            lines = [line("Slice", layer.name, layer.bottoms, raw, params)]
            lines += [reshape(f"{layer.name}_drop{i}", r, t, piece) for i, (r, t) in enumerate(zip(raw, layer.tops))]
            b.replace(layer, lines)
            what = f"each reshaped to {piece}"
        changes.append((layer, f"unbind of {src} {shape} (no axis in the ncnn param) became a Slice into {n} along the "
                               f"layer axis, {what}"))
    return _changed(b, changes)


def _one_layer_unbind(layer: Layer, src: str, shape, piece, model: ParamFile, b: Builder, changes: list) -> None:
    """unbind of a (1, 1, ...) state: the one piece is the whole input without the layer axis (a Reshape)."""
    if not piece:  # (1, 1): one element, already 1-D; unsqueezes of it keep it 1-D
        b.replace(layer, [reshape(layer.name, src, layer.tops[0], (1,))])
        fixed = _scalar_unsqueezes(model, layer.tops, b)
        what = "a Reshape to one element"
        if fixed:
            what += (f"; pnnx lowered it as a rank-0 scalar, so the {len(fixed)} ExpandDims on it "
                     f"({', '.join(fixed)}) keep the one element as 1-D (Reshape 0=1)")
    else:
        b.replace(layer, [reshape(layer.name, src, layer.tops[0], piece)])
        what = f"a Reshape to {piece}"
    changes.append((layer, f"unbind of {src} {shape} (a one-layer stack; the one-output Slice had no axis or "
                           f"slices in the ncnn param, which ncnn's Slice cannot run) became {what}"))


def _scalar_unsqueezes(model: ParamFile, blobs, b: Builder) -> list[str]:
    """ExpandDims reading (through Splits) a one-element piece -> Reshape 0=1 (unsqueeze of a scalar)."""
    consumers: dict[str, list[Layer]] = {}
    for layer in model.layers:
        for x in layer.bottoms:
            consumers.setdefault(x, []).append(layer)
    fixed, todo = [], list(blobs)
    while todo:
        blob = todo.pop()
        for user in consumers.get(blob, []):
            if user.type == "Split":
                todo.extend(user.tops)
            elif user.type == "ExpandDims" and len(user.bottoms) == 1 and len(user.tops) == 1:
                b.replace(user, [line("Reshape", user.name, user.bottoms, user.tops, ["0=1"])])
                fixed.append(user.name)
    return fixed


def batch_unsqueeze(ctx: RuleContext) -> RuleResult:
    """``ExpandDims`` that pnnx emitted for an unsqueeze of the batch axis ((T, C) -> (T, 1, C)): identity.

    pnnx logs 'unsqueeze batch dim 1 is not supported yet!' and still writes ``ExpandDims -23303=1,1``, which
    makes the (T, C) blob 3-D; in pnnx's batch-dropped layout the result is (T, C) again. The ncnn layers
    named ``unsqueeze_N`` are pnnx's ``torch.unsqueeze`` ops in the same order (the counts must agree).
    """
    model, pnnx_attrs = ctx.model, ctx.pnnx_attrs
    if not is_zipformer(model):
        return RuleResult.no_match(NOT_ZIPFORMER)
    ops = ops_of(pnnx_ops(pnnx_attrs), "torch.unsqueeze")
    layers = [layer for layer in model.layers if layer.name.startswith("unsqueeze_")]
    if len(ops) != len(layers):
        return RuleResult.no_match(f"{len(layers)} unsqueeze_N layers but {len(ops)} torch.unsqueeze in pnnx's graph")
    readers = consumers(model)
    b = Builder(model)
    changes = []
    for layer, op in zip(layers, ops):
        if layer.type != "ExpandDims" or len(layer.bottoms) != 1 or len(layer.tops) != 1:
            continue
        if any(r.type == "Permute" for r in readers.get(layer.tops[0], [])):
            continue  # a permute moves the new axis (the encoder output (T, 1, C) -> (1, T, C)): keep it 3-D
        src, dst = _in_shape(op), op.shapes.get(op.outputs[0]) if op.outputs else None
        dim = _ints(op.attrs.get("dim"))
        axes = layer.get(3)
        if (src is None or dst is None or dim != (1,) or len(src) != 2 or src[0] <= 1 or dst != (src[0], 1, src[1])
                or list(axes or []) != [1]):
            continue
        b.replace(layer, [reshape(layer.name, layer.bottoms[0], layer.tops[0], src)])
        changes.append((layer, f"unsqueeze(1) of {src} adds the batch axis (pnnx {op.name}: 'unsqueeze batch "
                               f"dim 1 is not supported'); the blob stays {src} (Reshape) instead of becoming 3-D"))
    if not changes:
        return RuleResult.no_match("no ExpandDims adds the batch axis")
    return _changed(b, changes)


def _state_targets(model: ParamFile, pnnx_attrs: dict) -> dict[str, tuple[int, ...]]:
    """out_k -> the ncnn layout (outermost first) sherpa-ncnn needs for state output k."""
    shapes = pnnx_input_shapes(pnnx_ops(pnnx_attrs))
    n_states = len(model.input_names) - 1
    if n_states <= 0 or n_states % 7:
        raise Refuse(f"{n_states} state inputs is not 7 per encoder stack")
    stacks = n_states // 7
    targets = {}
    for k in range(1, n_states + 1):
        shape = shapes.get(f"in{k}")
        if shape is None:
            raise Refuse(f"pnnx's graph has no shape for in{k}")
        if k <= stacks:  # cached_len: RunEncoder reshapes by h
            targets[f"out{k}"] = (shape[0], 1)
        elif k <= 2 * stacks:  # cached_avg: RunEncoder reshapes by (w, c)
            lay = state_layout(shape)
            targets[f"out{k}"] = (lay[0], 1, lay[-1])
        else:
            targets[f"out{k}"] = state_layout(shape)
    return targets


def _dims_of(layer: Layer) -> tuple[int, ...] | None:
    keys = sorted(p.id for p in layer.params)
    if keys not in ([0], [0, 1], [0, 1, 2]):
        return None
    return tuple(layer.get(k) for k in reversed(keys))


def state_output_layout(ctx: RuleContext) -> RuleResult:
    """The stacked state outputs -> the layout sherpa-ncnn feeds back (a Reshape after the stack)."""
    model, pnnx_attrs = ctx.model, ctx.pnnx_attrs
    if not is_zipformer(model):
        return RuleResult.no_match(NOT_ZIPFORMER)
    targets = _state_targets(model, pnnx_attrs)
    made_by = producers(model)
    b = Builder(model)
    changes = []
    for out, dims in targets.items():
        layer = made_by.get(out)
        if layer is None:
            continue
        if layer.type == "Reshape":
            src = made_by.get(layer.bottoms[0])
            if src is None or src.type != "Concat" or not src.name.startswith("stack_"):
                continue
            if _dims_of(layer) == dims:
                continue
            b.replace(layer, [reshape(layer.name, layer.bottoms[0], out, dims)])
            changes.append((layer, f"the stacked state {out} is reshaped to {dims} (outermost first), the layout "
                                   "sherpa-ncnn feeds back, instead of pnnx's "
                                   f"{' '.join(p.text for p in layer.params)}"))
        elif layer.type == "Concat" and layer.name.startswith("stack_") and layer.get(0, 0) == 0:
            flat = b.fresh(layer.name)
            b.replace(layer, [line("Concat", layer.name, layer.bottoms, [flat], [p.text for p in layer.params]),
                              reshape(f"{layer.name}_layout", flat, out, dims)])
            changes.append((layer, f"the stacked state {out} (a Concat along axis 0: the pieces in order) gets a "
                                   f"Reshape to {dims}, the layout sherpa-ncnn feeds back"))
    if not changes:
        return RuleResult.no_match("every stacked state output already has the layout sherpa-ncnn feeds back")
    return _changed(b, changes)


def is_zipformer(model: ParamFile) -> bool:
    n = len(model.input_names) - 1
    return n > 0 and n % 7 == 0 and any(layer.name.startswith("stack_") for layer in model.layers_of_type("Concat"))


