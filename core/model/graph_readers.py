"""What pnnx's own graph and a traced ``.pt`` show about an icefall encoder's hyperparameters.

The encoder's state inputs have icefall's shapes (../shared/reference/sherpa-ncnn.md §2): pnnx's graph
(``*.pnnx.param``, ``pnnx.Input`` lines ``#0=(1,39,80)f32``) and the traced ``.pt`` (its recorded example
inputs, core.model.traced_archive) give layers, dims, attention dims, kernels (conv cache = kernel - 1), left
context / memory size and the chunk (the feature input's time size). What the shapes leave open comes from
the same files: a Zipformer stack's frame rate (its layers' sequence length in pnnx's graph, or the traced
module's ``zipformer_downsampling_factors``), a ConvEmformer's chunk / right-context split (pnnx's split of
the subsampled chunk, or the traced module's ``chunk_length``). Each reader returns a ``Found``: values,
where each was read, problems, and facts later checks use (left context per stack, chunk + right context).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.model.architectures import SUBSAMPLING, ZIPFORMER_PAD_LENGTH, ArchSpec, Value

CONV_EMFORMER_PAD = 11  # icefall's ConvEmformer export traces T = chunk + right context + 11

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
class Found:
    """What one graph file shows."""

    values: dict[str, Value] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    notes: dict[str, object] = field(default_factory=dict)  # facts for constraints (left context, T)

    def put(self, name: str, value: Value, where: str) -> None:
        self.values[name] = value
        self.where[name] = where


def _zipformer_from_shapes(shapes: list[tuple[int, ...]], label: str, found: Found) -> None:
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


def zipformer_split(found: Found, ds: tuple[int, ...] | None, where: str) -> None:
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


def _conv_emformer_from_shapes(shapes: list[tuple[int, ...]], label: str, found: Found) -> None:
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


def conv_emformer_split(found: Found, chunk: int | None, right: int | None, where: str) -> None:
    total = found.notes.get("chunk_plus_right")
    if total is None or chunk is None or right is None:
        return
    if chunk + right != total:
        found.problems.append(f"{where}: chunk {chunk} + right context {right} != {total} "
                              f"({found.notes['chunk_where']})")
        return
    found.put("chunk_length", chunk, where)
    found.put("right_context_length", right, where)


def _lstm_from_shapes(shapes: list[tuple[int, ...]], label: str, found: Found) -> None:
    if len(shapes) != 4 or len(shapes[2]) != 3 or len(shapes[3]) != 3 or shapes[2][0] != shapes[3][0]:
        found.problems.append(f"{label}: inputs {shapes}; an LSTM encoder has x, x_lens, (L,1,D), (L,1,H)")
        return
    found.put("num_encoder_layers", shapes[2][0], f"{label}: hx rows")
    found.put("encoder_dim", shapes[2][-1], f"{label}: hx width")
    found.put("rnn_hidden_size", shapes[3][-1], f"{label}: cx width")


_FROM_SHAPES = {"zipformer": _zipformer_from_shapes, "conv-emformer": _conv_emformer_from_shapes,
                "lstm": _lstm_from_shapes}


def read_pnnx_graph(spec: ArchSpec, path: Path) -> Found:
    found = Found()
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
            zipformer_split(found, tuple(half // seq[i] for i in range(n)),
                             f"{label}: stack layers run at {tuple(seq[i] for i in range(n))} frames of "
                             f"{half} (decode-chunk-len / 2)")
    if spec.name == "conv-emformer" and "chunk_plus_right" in found.notes:
        total = found.notes["chunk_plus_right"]
        split = _pnnx_chunk_split(ops, total // SUBSAMPLING) if total % SUBSAMPLING == 0 else None
        if split:
            conv_emformer_split(found, split[0] * SUBSAMPLING, split[1] * SUBSAMPLING,
                                 f"{label}: the subsampled chunk is split {split[0]} + {split[1]} frames (x4)")
    return found


def read_traced_graph(spec: ArchSpec, path: Path) -> Found:
    from core.model.traced_archive import TracedArchiveError, read_traced
    found = Found()
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
            zipformer_split(found, tuple(ds), f"{label}: the traced module's zipformer_downsampling_factors")
            nlc = attrs.get("num_left_chunks")
            if isinstance(nlc, int) and found.values.get("num_left_chunks") not in (None, nlc):
                found.problems.append(f"{label}: the traced module's num_left_chunks {nlc} does not fit its "
                                      f"states ({found.values['num_left_chunks']})")
    if spec.name == "conv-emformer":
        chunk, right = attrs.get("chunk_length"), attrs.get("right_context_length")
        if isinstance(chunk, int) and isinstance(right, int):
            conv_emformer_split(found, chunk, right,
                                 f"{label}: the traced module's chunk_length / right_context_length")
    return found
