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

import re
from dataclasses import dataclass
from pathlib import Path

from core.model.found import Found
from core.model.spec import ArchSpec

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
    spec.values_from_input_shapes(shapes, label, found)
    spec.refine_from_pnnx(ops, label, found)
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
    spec.values_from_input_shapes(shapes, f"{label} (traced inputs)", found)
    spec.refine_from_traced(archive.attributes, label, found)
    return found
