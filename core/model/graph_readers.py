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

import os
from pathlib import Path

from core.model.found import Found
from core.model.spec import ArchSpec
from core.pnnx.graph import pnnx_input_shapes, read_pnnx_ops


def read_pnnx_graph(spec: ArchSpec, path: Path) -> Found:
    found = Found()
    label = path.name
    ops = read_pnnx_ops(path)
    if not ops and not (path.is_file() and os.access(path, os.R_OK)):
        found.problems.append(f"{path}: cannot read it")
        return found
    by_input = pnnx_input_shapes(ops)
    shapes = [by_input.get(f"in{k}", ()) for k in range(sum(op.type == "pnnx.Input" for op in ops))]
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
