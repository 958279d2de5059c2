"""Graph helpers every rule family shares: who produces and reads a blob, building replacement layer lines,
pnnx's own graph (the sizes and attributes the ncnn param drops)."""
from __future__ import annotations


from core.ncnn.param import (
    Layer,
    ParamFile,
    format_layer_line,
    parse_param,
    replace_header,
)
from core.pnnx.graph import PnnxOp
from core.rewrite.rule import Refuse



def producers(model: ParamFile) -> dict[str, Layer]:
    """blob -> the layer that writes it."""
    return {t: layer for layer in model.layers for t in layer.tops}


def consumers(model: ParamFile) -> dict[str, list[Layer]]:
    """blob -> the layers that read it, in file order."""
    out: dict[str, list[Layer]] = {}
    for layer in model.layers:
        for b in layer.bottoms:
            out.setdefault(b, []).append(layer)
    return out


def where(layer: Layer) -> str:
    return f"layer {layer.name!r} ({layer.type}) at line {layer.line}"


def eol_of(line: str) -> str:
    return line[len(line.rstrip("\r\n")):]


def line(type_: str, name: str, bottoms, tops, params=()) -> str:
    return format_layer_line(type_, name, list(bottoms), list(tops), list(params))


def crop(name: str, bottom: str, top: str, start: int, end: int, axis: int) -> str:
    return line("Crop", name, [bottom], [top], [f"-23309=1,{start}", f"-23310=1,{end}", f"-23311=1,{axis}"])


def reshape(name: str, bottom: str, top: str, dims: tuple[int, ...]) -> str:
    """Reshape to ncnn dims given outermost first ((c, h, w) -> 0=w 1=h 2=c)."""
    if not 1 <= len(dims) <= 3:
        raise Refuse(f"a reshape to {len(dims)} axes is not supported")
    params = [f"{k}={v}" for k, v in enumerate(reversed(dims))]
    return line("Reshape", name, [bottom], [top], params)


class Builder:
    """Collects replacement lines for a param file and keeps blob names unique."""

    def __init__(self, model: ParamFile):
        self.model = model
        self.lines: list[str | None] = list(model.lines)
        self.taken = set(model.blob_names) | {layer.name for layer in model.layers}

    def fresh(self, stem: str) -> str:
        n = 0
        while f"{stem}_z{n}" in self.taken:
            n += 1
        name = f"{stem}_z{n}"
        self.taken.add(name)
        return name

    def eol(self, layer: Layer) -> str:
        text = self.lines[layer.line - 1] or "\n"
        return eol_of(text) or "\n"

    def replace(self, layer: Layer, new_lines: list[str]) -> None:
        eol = self.eol(layer)
        self.lines[layer.line - 1] = "".join(x + eol for x in new_lines)

    def text(self) -> str:
        """The whole new file, its header counting the layers and blobs it now has."""
        body = "".join(x for x in self.lines if x is not None)
        result = parse_param(body, self.model.source)
        model = result.model
        if model is None:
            raise Refuse(f"the rewrite produced an unreadable file ({result.describe()})")
        n_layers = len(model.layers)
        lines = replace_header(list(model.lines), model.header_line, n_layers, model.counted_blobs())
        return "".join(lines)


def mislowered_unbinds(model: ParamFile) -> list[Layer]:
    """Slices pnnx wrote without axis or sizes: its unbind of a state input along the layer axis
    ('unbind along batch axis 0 is not supported'). A stack of one layer gives a Slice with ONE output,
    which ncnn's Slice cannot run either (it reads its missing slices array): matched the same way."""
    return [layer for layer in model.layers if layer.type == "Slice" and not layer.params and layer.tops]


# -- pnnx's own graph (core.pnnx.graph reads it) --------------------

def pnnx_ops(pnnx_attrs: dict) -> list[PnnxOp]:
    """pnnx's op list (``pnnx_attrs["@ops"]``); refuses when pnnx's graph was not available."""
    ops = pnnx_attrs.get("@ops") or []
    if not ops:
        raise Refuse("pnnx's own graph (*.pnnx.param) is needed for the sizes and was not available")
    return ops


def ops_of(ops: list[PnnxOp], type_: str) -> list[PnnxOp]:
    return [o for o in ops if o.type == type_]
