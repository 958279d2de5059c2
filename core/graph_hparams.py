"""The metadata values an exported encoder's own graph reveals, and refusing flags that contradict them.

sherpa-ncnn trusts the SherpaMetaData line blindly: icefall's defaults written into a model whose
graph has other sizes load fine and decode garbage. The graph knows better. The encoder's state inputs
have icefall's shapes (../shared/reference/sherpa-ncnn.md §2), so

- pnnx's own graph (``*.pnnx.param``, ``pnnx.Input`` lines ``#0=(1,39,80)f32``) and the traced ``.pt``
  (its recorded example inputs) give layers, dims, attention dims, kernels (conv cache = kernel - 1),
  left context / memory size and the chunk (the feature input's time size);
- what the shapes leave open comes from the same files: a Zipformer stack's frame rate (its layers'
  sequence length in pnnx's graph, or the traced module's ``zipformer_downsampling_factors``), a
  ConvEmformer's chunk / right-context split (pnnx's split of the subsampled chunk, or the traced
  module's ``chunk_length``);
- the ncnn files alone show less (input count, LSTM and depthwise-convolution sizes, the unbind of each
  Zipformer stack's states); what they cannot confirm must be given, or the plan is refused.

``read_graph`` collects what each file shows (``GraphReading``); ``reconcile`` merges it with the given
flags: graph values win and are marked ``graph``, a given flag that differs is refused, a metadata
value nobody can confirm is refused with how to supply it.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

from .architectures import (SUBSAMPLING, ZIPFORMER_PAD_LENGTH, ArchSpec, Problem, ResolvedValues, Value,
                            get_arch)

GRAPH = "graph"
CONV_EMFORMER_PAD = 11  # icefall's ConvEmformer export traces T = chunk + right context + 11
SUPPLY_HINT = ("put pnnx's own graph (*.pnnx.param) or the traced encoder_jit_trace-pnnx.pt beside the ncnn "
               "files (or in exp/ or traced/ there)")

_SHAPE = re.compile(r"#([^=\s]+)=\(([^)]*)\)(\w+)")


# -- reading pnnx's graph ------------------------------------------------------------------

@dataclass(frozen=True)
class PnnxOp:
    type: str
    name: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    params: dict
    shapes: dict  # blob -> shape tuple
    line: int


def _dims(text: str) -> tuple[int, ...]:
    out = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            out.append(int(part))
        except ValueError:
            out.append(-1)  # '?' (dynamic) dims
    return tuple(out)


def read_pnnx_ops(path: Path) -> list[PnnxOp]:
    ops = []
    with open(path, encoding="utf-8", errors="replace") as fh:
        for number, line in enumerate(fh, start=1):
            tokens = line.split()
            if number <= 2 or len(tokens) < 4:
                continue
            try:
                n_in, n_out = int(tokens[2]), int(tokens[3])
            except ValueError:
                continue
            blobs = tokens[4:4 + n_in + n_out]
            params, shapes = {}, {}
            for tok in tokens[4 + n_in + n_out:]:
                m = _SHAPE.fullmatch(tok)
                if m:
                    shapes[m.group(1)] = _dims(m.group(2))
                elif "=" in tok and not tok.startswith(("#", "@", "$")):
                    k, v = tok.split("=", 1)
                    params[k] = v
            ops.append(PnnxOp(tokens[0], tokens[1], tuple(blobs[:n_in]), tuple(blobs[n_in:]), params, shapes,
                              number))
    return ops


def pnnx_input_shapes(ops: list[PnnxOp]) -> list[tuple[int, ...]]:
    inputs = [op for op in ops if op.type == "pnnx.Input"]
    return [op.shapes.get(op.outputs[0], ()) for op in inputs if op.outputs]


_ZIP_LAYER = re.compile(r"(?:^|\.)encoders\.(\d+)\.(?:encoder\.)?layers\.\d+\.feed_forward1\.in_proj$")


def _zipformer_seq_by_stack(ops: list[PnnxOp]) -> dict[int, int]:
    """Each stack's sequence length (frames it runs at): its layers' first Linear input (seq,1,D)/(1,seq,D)."""
    seq: dict[int, int] = {}
    for op in ops:
        m = _ZIP_LAYER.search(op.name) if op.type == "nn.Linear" else None
        if m and op.inputs and op.inputs[0] in op.shapes:
            shape = op.shapes[op.inputs[0]]
            if len(shape) >= 2 and all(d > 0 for d in shape):
                seq.setdefault(int(m.group(1)), math.prod(shape[:-1]))
    return seq


def _pnnx_chunk_split(ops: list[PnnxOp], frames: int) -> tuple[int, int] | None:
    """(chunk, right context) after subsampling: pnnx's first split of the (frames,1,D) utterance."""
    for op in ops:
        if op.type not in ("torch.tensor_split", "Tensor.slice", "torch.split") or not op.inputs:
            continue
        src = op.shapes.get(op.inputs[0])
        if not src or len(src) != 3 or src[0] != frames or src[1] != 1 or op.params.get("dim") != "0":
            continue
        outs = [op.shapes.get(o) for o in op.outputs]
        if len(outs) == 2 and all(outs) and outs[0][0] + outs[1][0] == frames:
            return outs[0][0], outs[1][0]
    return None


# -- what shapes say, per architecture -------------------------------------------------------

@dataclass
class _Found:
    values: dict[str, Value] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)  # facts for constraints (left context, T)

    def put(self, name: str, value: Value, where: str) -> None:
        self.values[name] = value
        self.where[name] = where


def _zipformer_from_shapes(shapes: list[tuple[int, ...]], label: str, found: _Found) -> None:
    states = shapes[1:]
    if not shapes or len(states) % 7 or not states:
        found.problems.append(f"{label}: {len(shapes)} inputs; a Zipformer encoder has 1 + 7 x stacks")
        return
    n = len(states) // 7
    groups = [states[k * n:(k + 1) * n] for k in range(7)]
    lens, avg, key, val, val2, conv1, conv2 = groups
    try:
        layers = tuple(s[0] for s in lens)
        dims = tuple(s[-1] for s in avg)
        att = tuple(s[-1] for s in key)
        left = tuple(s[1] for s in key)
        kernels = tuple(s[-1] + 1 for s in conv1)
        bad = [i for i in range(n) if len(key[i]) != 4 or len(conv1[i]) != 4 or val[i][-1] * 2 != att[i]
               or val2[i] != val[i] or conv2[i] != conv1[i] or avg[i][0] != layers[i] or key[i][0] != layers[i]]
    except IndexError:
        bad = [0]
    if bad:
        found.problems.append(f"{label}: the state inputs do not have icefall's Zipformer shapes "
                              f"(cached_len, cached_avg, cached_key, cached_val, cached_val2, cached_conv1/2 per "
                              f"stack); stack {bad[0]}: {[g[bad[0]] for g in groups]}")
        return
    t = shapes[0][1] if len(shapes[0]) == 3 else shapes[0][0]
    found.put("num_encoder_layers", layers, f"{label}: cached_len rows (in1..in{n})")
    found.put("encoder_dims", dims, f"{label}: cached_avg width")
    found.put("attention_dims", att, f"{label}: cached_key width")
    found.put("cnn_module_kernels", kernels, f"{label}: cached_conv width + 1")
    found.put("decode_chunk_len", t - ZIPFORMER_PAD_LENGTH,
              f"{label}: in0 has {t} frames = decode-chunk-len + {ZIPFORMER_PAD_LENGTH}")
    found.notes["left_context"] = left


def _zipformer_split(found: _Found, ds: tuple[int, ...] | None, where: str) -> None:
    """Downsampling factors and num-left-chunks from the per-stack left context C_i = dcl/2 * nlc / ds_i."""
    left = found.notes.get("left_context")
    dcl = found.values.get("decode_chunk_len")
    if ds is None or left is None or dcl is None:
        return
    if len(ds) != len(left):
        found.problems.append(f"{where}: {len(ds)} downsampling factors for {len(left)} stacks")
        return
    half = dcl // 2
    products = {c * d for c, d in zip(left, ds)}
    if len(products) != 1 or next(iter(products)) % half:
        found.problems.append(f"{where}: downsampling factors {ds} do not fit the left context of each stack "
                              f"{left} (icefall: left context = decode-chunk-len/2 x num-left-chunks / factor)")
        return
    found.put("zipformer_downsampling_factors", tuple(ds), where)
    found.put("num_left_chunks", next(iter(products)) // half,
              f"{where}, with the left context of each stack {left}")


def _conv_emformer_from_shapes(shapes: list[tuple[int, ...]], label: str, found: _Found) -> None:
    states = shapes[1:]
    if not shapes or not states or len(states) % 4:
        found.problems.append(f"{label}: {len(shapes)} inputs; a ConvEmformer encoder has 1 + 4 x layers")
        return
    n = len(states) // 4
    mem, key, val, conv = states[0], states[1], states[2], states[3]
    if len(mem) != 3 or len(key) != 3 or len(conv) != 3 or val != key or \
            any(states[4 * i:4 * i + 4] != states[0:4] for i in range(n)):
        found.problems.append(f"{label}: the state inputs do not have icefall's ConvEmformer shapes "
                              f"((memory,1,D), (left,1,D) x2, (1,D,kernel-1) per layer): {states[:4]}")
        return
    t = shapes[0][1] if len(shapes[0]) == 3 else shapes[0][0]
    found.put("num_encoder_layers", n, f"{label}: {len(states)} state inputs = 4 x layers")
    found.put("memory_size", mem[0], f"{label}: memory state rows")
    found.put("encoder_dim", mem[-1], f"{label}: state width")
    found.put("left_context_length", key[0] * SUBSAMPLING, f"{label}: key cache rows x {SUBSAMPLING}")
    found.put("cnn_module_kernel", conv[-1] + 1, f"{label}: conv cache width + 1")
    found.notes["chunk_plus_right"] = t - CONV_EMFORMER_PAD
    found.notes["chunk_where"] = f"{label}: in0 has {t} frames = chunk + right context + {CONV_EMFORMER_PAD}"


def _conv_emformer_split(found: _Found, chunk: int | None, right: int | None, where: str) -> None:
    total = found.notes.get("chunk_plus_right")
    if total is None or chunk is None or right is None:
        return
    if chunk + right != total:
        found.problems.append(f"{where}: chunk {chunk} + right context {right} != {total} "
                              f"({found.notes['chunk_where']})")
        return
    found.put("chunk_length", chunk, where)
    found.put("right_context_length", right, where)


def _lstm_from_shapes(shapes: list[tuple[int, ...]], label: str, found: _Found) -> None:
    if len(shapes) != 4 or len(shapes[2]) != 3 or len(shapes[3]) != 3 or shapes[2][0] != shapes[3][0]:
        found.problems.append(f"{label}: inputs {shapes}; an LSTM encoder has x, x_lens, (L,1,D), (L,1,H)")
        return
    found.put("num_encoder_layers", shapes[2][0], f"{label}: hx rows")
    found.put("encoder_dim", shapes[2][-1], f"{label}: hx width")
    found.put("rnn_hidden_size", shapes[3][-1], f"{label}: cx width")


_FROM_SHAPES = {"zipformer": _zipformer_from_shapes, "conv-emformer": _conv_emformer_from_shapes,
                "lstm": _lstm_from_shapes}


def read_pnnx_graph(spec: ArchSpec, path: Path) -> _Found:
    found = _Found()
    label = path.name
    try:
        ops = read_pnnx_ops(path)
    except OSError as exc:
        found.problems.append(f"{path}: cannot read ({exc})")
        return found
    shapes = pnnx_input_shapes(ops)
    if not shapes or any(not s or min(s) < 0 for s in shapes):
        found.notes["no_shapes"] = True  # pnnx ran without input shapes: its graph shows none
        return found
    _FROM_SHAPES[spec.name](shapes, label, found)
    if spec.name == "zipformer" and "decode_chunk_len" in found.values:
        seq = _zipformer_seq_by_stack(ops)
        n = len(found.values["num_encoder_layers"])
        half = found.values["decode_chunk_len"] // 2
        if sorted(seq) == list(range(n)) and all(s > 0 and half % s == 0 for s in seq.values()):
            _zipformer_split(found, tuple(half // seq[i] for i in range(n)),
                             f"{label}: stack layers run at {tuple(seq[i] for i in range(n))} frames of "
                             f"{half} (decode-chunk-len / 2)")
    if spec.name == "conv-emformer" and "chunk_plus_right" in found.notes:
        total = found.notes["chunk_plus_right"]
        split = _pnnx_chunk_split(ops, total // SUBSAMPLING) if total % SUBSAMPLING == 0 else None
        if split:
            _conv_emformer_split(found, split[0] * SUBSAMPLING, split[1] * SUBSAMPLING,
                                 f"{label}: the subsampled chunk is split {split[0]} + {split[1]} frames (x4)")
    return found


def read_traced_graph(spec: ArchSpec, path: Path) -> _Found:
    from .traced_archive import TracedArchiveError, read_traced
    found = _Found()
    label = path.name
    try:
        archive = read_traced(path)
    except TracedArchiveError as exc:
        found.notes["unreadable"] = str(exc)  # the other graph files may still tell everything
        return found
    shapes = archive.flat_shapes()
    if not shapes:
        found.notes["no_shapes"] = True  # saved without its example inputs: nothing to read
        return found
    _FROM_SHAPES[spec.name](shapes, f"{label} (traced inputs)", found)
    attrs = archive.attributes
    if spec.name == "zipformer":
        ds = attrs.get("zipformer_downsampling_factors")
        if isinstance(ds, (tuple, list)) and all(isinstance(x, int) for x in ds):
            _zipformer_split(found, tuple(ds), f"{label}: the traced module's zipformer_downsampling_factors")
            nlc = attrs.get("num_left_chunks")
            if isinstance(nlc, int) and found.values.get("num_left_chunks") not in (None, nlc):
                found.problems.append(f"{label}: the traced module's num_left_chunks {nlc} does not fit its "
                                      f"states ({found.values['num_left_chunks']})")
    if spec.name == "conv-emformer":
        chunk, right = attrs.get("chunk_length"), attrs.get("right_context_length")
        if isinstance(chunk, int) and isinstance(right, int):
            _conv_emformer_split(found, chunk, right,
                                 f"{label}: the traced module's chunk_length / right_context_length")
    return found


# -- the ncnn files alone --------------------------------------------------------------------

def read_ncnn_graph(spec: ArchSpec, path: Path) -> _Found:
    from .ncnn_param import load_param
    found = _Found()
    label = path.name
    parsed = load_param(path)
    model = parsed.model
    if model is None:
        found.problems.append(parsed.describe())
        return found
    inputs = model.input_names
    if spec.name == "lstm":
        lstms = model.layers_of_type("LSTM")
        if lstms:
            d = {int(x.get(0, 0)) for x in lstms}
            h = {int(x.get(3, x.get(0, 0))) for x in lstms}
            found.put("num_encoder_layers", len(lstms), f"{label}: {len(lstms)} LSTM layers")
            if len(d) == 1:
                found.put("encoder_dim", d.pop(), f"{label}: LSTM num_output (0=)")
            if len(h) == 1:
                found.put("rnn_hidden_size", h.pop(), f"{label}: LSTM hidden size (3=)")
        return found
    dw = model.layers_of_type("ConvolutionDepthWise1D")
    if spec.name == "conv-emformer":
        states = len(inputs) - 1
        if states > 0 and states % 4 == 0:
            found.put("num_encoder_layers", states // 4, f"{label}: {len(inputs)} inputs = 1 + 4 x layers")
        if dw and len({(x.get(0), x.get(1)) for x in dw}) == 1:
            found.put("encoder_dim", int(dw[0].get(0)), f"{label}: depthwise convolution channels")
            found.put("cnn_module_kernel", int(dw[0].get(1)), f"{label}: depthwise convolution kernel")
            _conv_emformer_ncnn_context(model, int(dw[0].get(0)), label, found)
        return found
    states = len(inputs) - 1
    if states <= 0 or states % 7:
        found.problems.append(f"{label}: {len(inputs)} inputs; a Zipformer encoder has 1 + 7 x stacks")
        return found
    n = states // 7
    consumers: dict[str, list] = {}
    for layer in model.layers:
        for b in layer.bottoms:
            consumers.setdefault(b, []).append(layer)
    layers = []
    for name in inputs[1:1 + n]:  # cached_len of each stack, unbound per layer
        users = consumers.get(name, [])
        layers.append(len(users[0].tops) if len(users) == 1 and users[0].type == "Slice" else None)
    if None not in layers:
        found.put("num_encoder_layers", tuple(layers), f"{label}: each stack's cached_len is unbound into its layers")
        _zipformer_ncnn_attention(model, tuple(layers), label, found)
        if len(dw) == 2 * sum(layers):  # conv_module1 and conv_module2 per layer, in stack order
            dims, kernels, start = [], [], 0
            for count in layers:
                mine = dw[start:start + 2 * count]
                start += 2 * count
                dims.append({int(x.get(0)) for x in mine})
                kernels.append({int(x.get(1)) for x in mine})
            if all(len(s) == 1 for s in dims + kernels):
                found.put("encoder_dims", tuple(s.pop() for s in dims), f"{label}: depthwise convolution channels")
                found.put("cnn_module_kernels", tuple(s.pop() for s in kernels),
                          f"{label}: depthwise convolution kernels")
    return found


def _conv_emformer_ncnn_context(model, dim: int, label: str, found: _Found) -> None:
    """Chunk, right context, left context and memory from the ncnn graph's constants.

    The first layer's key cache output (out2) keeps the last L rows (a Crop starting at -L); its
    attention reshapes query (D/H, H, U) and key/value (D/H, H, memory + L + U) with U = chunk/4 +
    right/4 subsampled frames; the input is split at chunk/4 first (a Slice on axis 0). Every relation
    is checked; anything else leaves the values unknown."""
    items = model.layers
    crop = next((x for x in items if x.type == "Crop" and x.tops == ("out2",)), None)
    starts, axes = (crop.get(9), crop.get(11)) if crop is not None else (None, None)
    if not (isinstance(starts, tuple) and len(starts) == 1 and starts[0] < 0 and axes == (0,)):
        return
    left = -starts[0]
    reshapes = [x for x in items if x.type == "Reshape" and all(isinstance(x.get(k), int) for k in (0, 1, 2))]
    attn = next(((q, k, v) for q, k, v in zip(reshapes, reshapes[1:], reshapes[2:])
                 if q.get(0) * q.get(1) == dim and (q.get(0), q.get(1)) == (k.get(0), k.get(1)) == (v.get(0), v.get(1))
                 and k.get(2) == v.get(2) > q.get(2) > 0), None)
    if attn is None:
        return
    frames, span = attn[0].get(2), attn[1].get(2)
    split = next((x for x in items if x.type == "Slice" and x.get(1, 0) == 0 and len(x.tops) == 2
                  and isinstance(x.get(0), tuple) and len(x.get(0)) == 2 and x.index < attn[0].index), None)
    if split is None or not 0 < split.get(0)[0] <= frames or span - left - frames < 0:
        return
    chunk = split.get(0)[0]
    where = f"{label}: Crop of out2, attention Reshape and chunk Slice constants"
    found.put("left_context_length", left * SUBSAMPLING, f"{label}: the key cache output keeps {left} rows (x4)")
    found.put("memory_size", span - left - frames, f"{where} (key span {span} = memory + {left} + {frames})")
    found.put("chunk_length", chunk * SUBSAMPLING, f"{where} (subsampled chunk {chunk} of {frames}, x4)")
    found.put("right_context_length", (frames - chunk) * SUBSAMPLING, f"{where} ({frames - chunk} frames, x4)")


def _zipformer_ncnn_attention(model, layers: tuple[int, ...], label: str, found: _Found) -> None:
    """Attention dims, chunk, frame rates and left context from the ncnn graph's Reshape constants.

    Each Zipformer layer's attention projects with one InnerProduct (2A + A/2 + 4H outputs: query, key,
    value, 4-dim positions per head) and reshapes query (A/H, H, seq), positions (4, H, seq), key
    (A/H, H, left+seq) and value (A/2H, H, left+seq); the embedding's Reshape (C*F, dcl/2) comes first.
    Every relation is checked; anything else leaves the values unknown."""
    items = model.layers
    per_layer = []
    for idx, layer in enumerate(items):
        if layer.type != "InnerProduct":
            continue
        shapes = []
        for nxt in items[idx + 1:]:
            if nxt.type == "InnerProduct" or len(shapes) == 4:
                break
            if nxt.type == "Reshape" and all(isinstance(nxt.get(k), int) for k in (0, 1, 2)):
                shapes.append((nxt.get(0), nxt.get(1), nxt.get(2)))
        if len(shapes) < 4:
            continue
        q, pos, k, v = shapes
        heads, seq, span = q[1], q[2], k[2]
        att = q[0] * heads
        if pos[0] == 4 and pos[1] == k[1] == v[1] == heads and pos[2] == seq and v[2] == span \
                and k[0] == q[0] and v[0] * 2 == q[0] and layer.get(0) == 2 * att + att // 2 + 4 * heads:
            per_layer.append((att, heads, seq, span - seq))
    if len(per_layer) != sum(layers):
        return
    stacks, start = [], 0
    for count in layers:
        mine = set(per_layer[start:start + count])
        start += count
        if len(mine) != 1:
            return
        stacks.append(mine.pop())
    found.put("attention_dims", tuple(s[0] for s in stacks), f"{label}: attention Reshape constants (A/H x H)")
    found.put("nhead", tuple(s[1] for s in stacks), f"{label}: attention Reshape constants (heads)")
    embed = next((x for x in items if x.type == "Reshape" and isinstance(x.get(1), int) and x.get(2) is None
                  and any(c.type == "Convolution" and c.index < x.index for c in items[:x.index])), None)
    if embed is None:
        return
    half = embed.get(1)
    if any(half % s[2] for s in stacks):
        return
    found.put("decode_chunk_len", 2 * half, f"{label}: the embedding's Reshape has {half} frames = decode-chunk-len / 2")
    found.notes["left_context"] = tuple(s[3] for s in stacks)
    _zipformer_split(found, tuple(half // s[2] for s in stacks),
                     f"{label}: attention Reshape constants (each stack's frames of {half})")


# -- all files together ----------------------------------------------------------------------

@dataclass
class GraphReading:
    """What the encoder's graph files reveal: value and where it was read, per hyperparameter name."""

    arch: ArchSpec
    values: dict[str, Value] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    files: list[Path] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)

    @property
    def file_names(self) -> str:
        return ", ".join(p.name for p in self.files) or "no graph files"

    def meta_names(self) -> list[str]:
        return [hp.name for hp in self.arch.hyperparams if hp.meta_key is not None]


def read_graph(arch: str | ArchSpec, *, ncnn_param: Path | None = None, pnnx_param: Path | None = None,
               traced_pt: Path | None = None) -> GraphReading:
    """Read every given graph file (most telling first) and merge; files that disagree are a problem."""
    spec = get_arch(arch) if isinstance(arch, str) else arch
    reading = GraphReading(spec)
    readers = [(traced_pt, read_traced_graph), (pnnx_param, read_pnnx_graph), (ncnn_param, read_ncnn_graph)]
    for path, reader in readers:
        if path is None or not Path(path).is_file():
            continue
        path = Path(path)
        found = reader(spec, path)
        if found.notes.get("unreadable"):
            reading.warnings.append(f"{found.notes['unreadable']}; its recorded shapes are not used")
            continue
        if found.notes.get("no_shapes"):
            reading.warnings.append(f"{path}: has no input shapes (traced or converted without them); not used "
                                    "for the hyperparameters")
            continue
        reading.files.append(path)
        reading.problems += found.problems
        for k, v in found.notes.items():
            reading.notes.setdefault(k, v)  # the first file's facts (later files agree or are reported)
        for name, value in found.values.items():
            if name not in reading.values:
                reading.values[name] = value
                reading.where[name] = found.where[name]
            elif reading.values[name] != value:
                hp = spec.param(name)
                reading.problems.append(f"the graph files disagree on {hp.flag}: {reading.where[name]} gives "
                                        f"{hp.format(reading.values[name])}, {found.where[name]} gives "
                                        f"{hp.format(value)}; are they from the same export?")
    return reading


# -- merging with the given flags ----------------------------------------------------------

def _parse_given(spec: ArchSpec, given: Mapping[str, object]) -> tuple[dict[str, Value], list[Problem]]:
    values: dict[str, Value] = {}
    problems: list[Problem] = []
    for key, raw in given.items():
        if raw is None:
            continue
        try:
            hp = spec.param(key)
        except KeyError:
            problems.append(Problem("error", (key,), f"{key} is not a {spec.title} hyperparameter"))
            continue
        text = ",".join(map(str, raw)) if isinstance(raw, (list, tuple)) else str(raw)
        try:
            value = hp.parse(text)
        except ValueError as exc:
            problems.append(Problem("error", (hp.flag,), str(exc)))
            continue
        if hp.kind == "int" and isinstance(value, tuple):
            problems.append(Problem("error", (hp.flag,), f"{hp.flag} takes one whole number"))
            continue
        values[hp.name] = value
    return values, problems


def _derive(spec: ArchSpec, values: dict[str, Value], sources: dict[str, str], reading: GraphReading) -> list[str]:
    """Values the graph fixes once a given flag settles a split (e.g. given factors -> num-left-chunks)."""
    notes = []
    if spec.name == "zipformer":
        left = reading.notes.get("left_context")
        dcl = values.get("decode_chunk_len") if sources.get("decode_chunk_len") == GRAPH else None
        ds = values.get("zipformer_downsampling_factors")
        if left and dcl and ds and sources.get("zipformer_downsampling_factors") == "given" \
                and "num_left_chunks" not in reading.values and len(ds) == len(left):
            products = {c * d for c, d in zip(left, ds)}
            if len(products) == 1 and next(iter(products)) % (dcl // 2) == 0:
                values["num_left_chunks"] = next(iter(products)) // (dcl // 2)
                sources["num_left_chunks"] = GRAPH
                reading.where["num_left_chunks"] = (f"left context of each stack {left} with the given "
                                                    f"--zipformer-downsampling-factors")
            else:
                notes.append(f"--zipformer-downsampling-factors {spec.param('zipformer_downsampling_factors').format(ds)}"
                             f" does not fit the graph's left context per stack {left} (left context x factor must be "
                             f"the same for every stack)")
    if spec.name == "conv-emformer":
        total = reading.notes.get("chunk_plus_right")
        if total is not None and "chunk_length" not in reading.values:
            chunk, right = values.get("chunk_length"), values.get("right_context_length")
            cs, rs = sources.get("chunk_length"), sources.get("right_context_length")
            if cs == "given" and rs != "given":
                values["right_context_length"], sources["right_context_length"] = total - chunk, GRAPH
                reading.where["right_context_length"] = f"{reading.notes['chunk_where']}, with the given --chunk-length"
            elif rs == "given" and cs != "given":
                values["chunk_length"], sources["chunk_length"] = total - right, GRAPH
                reading.where["chunk_length"] = f"{reading.notes['chunk_where']}, with the given --right-context-length"
            elif cs == "given" and rs == "given" and chunk + right != total:
                notes.append(f"--chunk-length {chunk} + --right-context-length {right} = {chunk + right}, but "
                             f"{reading.notes['chunk_where']}")
    return notes


def _size_defaults(spec: ArchSpec, values: dict[str, Value], sources: dict[str, str]) -> None:
    """Per-stack defaults of flags the metadata does not use, sized to the graph's stacks (one per stack)."""
    if spec.name != "zipformer" or not isinstance(values.get("num_encoder_layers"), tuple):
        return
    n = len(values["num_encoder_layers"])
    for hp in spec.hyperparams:
        if sources.get(hp.name) == "default" and hp.kind == "int_list" and len(values[hp.name]) != n:
            first = values[hp.name][0]
            values[hp.name] = tuple([first] * n)
    if sources.get("encoder_unmasked_dims") == "default" and isinstance(values.get("encoder_dims"), tuple):
        values["encoder_unmasked_dims"] = tuple(min(u, d) for u, d in zip(values["encoder_unmasked_dims"],
                                                                          values["encoder_dims"]))


def reconcile(spec: ArchSpec, given: Mapping[str, object], reading: GraphReading) -> ResolvedValues:
    """The hyperparameters to write: the graph's where it shows them, else given, else refused/defaulted.

    Refused (errors naming the flag): a given value the graph contradicts; a metadata value neither the
    graph files nor a flag states. Flags the metadata does not use fall back to icefall's defaults.
    """
    parsed, problems = _parse_given(spec, given)
    values: dict[str, Value] = {}
    sources: dict[str, str] = {}
    for msg in reading.problems:
        problems.append(Problem("error", (), f"encoder graph: {msg}"))
    for hp in spec.hyperparams:
        graph = reading.values.get(hp.name)
        mine = parsed.get(hp.name)
        if graph is not None:
            if mine is not None and mine != graph:
                problems.append(Problem("error", (hp.flag,),
                                        f"{hp.flag} {hp.format(mine)} contradicts the model: its graph has "
                                        f"{hp.format(graph)} ({reading.where[hp.name]}); leave {hp.flag} out (it is "
                                        f"read from the graph) or check that the directory holds the model you mean"))
            values[hp.name], sources[hp.name] = graph, GRAPH
        elif mine is not None:
            values[hp.name], sources[hp.name] = mine, "given"
        else:
            values[hp.name], sources[hp.name] = hp.parse(hp.default), "default"
    for msg in _derive(spec, values, sources, reading):
        problems.append(Problem("error", (), msg))
    for hp in spec.hyperparams:
        if hp.meta_key is not None and sources[hp.name] == "default":
            problems.append(Problem("error", (hp.flag,),
                                    f"{hp.flag}: the encoder's graph files ({reading.file_names}) do not show it and "
                                    f"it was not given; give {hp.flag} (the value the model was exported with, "
                                    f"icefall's default is {hp.default}) or {SUPPLY_HINT}"))
    _size_defaults(spec, values, sources)
    if not problems:
        problems = [_soften(spec, p, sources) for p in spec.rules(values)]
    return ResolvedValues(spec, values, sources, problems)


def _soften(spec: ArchSpec, problem: Problem, sources: Mapping[str, str]) -> Problem:
    """A rule broken only because of a default the metadata does not use (e.g. --nhead against the graph's
    dims) says nothing about the model: a warning, not a refusal."""
    if problem.severity != "error" or not problem.flags:
        return problem
    hps = [spec.param(f) for f in problem.flags if any(h.flag == f for h in spec.hyperparams)]
    if len(hps) != len(problem.flags) or any(sources.get(h.name) == "given" for h in hps):
        return problem
    assumed = [h.flag for h in hps if h.meta_key is None and sources.get(h.name) == "default"]
    if assumed:
        return Problem("warning", problem.flags, f"{problem.message} ({', '.join(assumed)}: icefall's default, "
                                                 "assumed; it is not written to the metadata, so the run goes on)")
    return problem


def graph_mismatches(spec: ArchSpec, values: Mapping[str, Value], reading: GraphReading) -> list[str]:
    """Sentences naming every metadata value that disagrees with what the graph shows (also the sums and
    products the graph fixes when it does not show the parts: chunk + right context, left context x factor)."""
    out = []
    for hp in spec.hyperparams:
        if hp.meta_key is None or hp.name not in reading.values or hp.name not in values:
            continue
        if values[hp.name] != reading.values[hp.name]:
            out.append(f"{hp.flag} is {hp.format(values[hp.name])} but the encoder's graph has "
                       f"{hp.format(reading.values[hp.name])} ({reading.where[hp.name]})")
    total = reading.notes.get("chunk_plus_right")
    if spec.name == "conv-emformer" and total is not None and "chunk_length" not in reading.values:
        chunk, right = values.get("chunk_length"), values.get("right_context_length")
        if isinstance(chunk, int) and isinstance(right, int) and chunk + right != total:
            out.append(f"--chunk-length {chunk} + --right-context-length {right} = {chunk + right}, but "
                       f"{reading.notes['chunk_where']}")
    left, dcl = reading.notes.get("left_context"), values.get("decode_chunk_len")
    ds, nlc = values.get("zipformer_downsampling_factors"), values.get("num_left_chunks")
    if spec.name == "zipformer" and left and isinstance(dcl, int) and isinstance(ds, tuple) and isinstance(nlc, int) \
            and "num_left_chunks" not in reading.values and len(ds) == len(left):
        want = tuple(dcl // 2 * nlc // d for d in ds)
        if want != tuple(left):
            out.append(f"--decode-chunk-len {dcl} / 2 x --num-left-chunks {nlc} / --zipformer-downsampling-factors "
                       f"gives left contexts {want}, but the encoder's graph has {tuple(left)} (cached_key rows)")
    return out
