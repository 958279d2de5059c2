"""Call a traced TorchScript module the way it was traced, from inputs numbered the way pnnx numbers them.

icefall traces its encoders with structured arguments -- ``(x, states)`` with
``states`` a ``List[Tensor]`` (Zipformer, ConvEmformer), ``(x, x_lens, states)``
with ``states`` a ``Tuple[Tensor, Tensor]`` (LSTM) -- while older or hand-made
exports use flat ``(x, *states)``; decoders take ``(y, need_pad)`` with a bool
tensor that pnnx folds away. pnnx flattens the tensor leaves of the arguments in
order into ``in0..inK`` (and the outputs into ``out0..outK``), so everything
else in the tool speaks in that flat numbering. This module reads the forward
signature, rebuilds the structure from a flat list, calls the module and
flattens what it returns.

Shapes of list/tuple arguments are not kept by ``torch.jit.load(...,
_restore_shapes=True)`` (it raises on them), so input shapes come from, in
order: the restored shapes (all-Tensor signatures), pnnx's own graph
(``*.pnnx.param``: ``pnnx.Input`` lines carry ``#K=(2,1,384)f32``), a reference
npz (``chunk0_inK``), or the model's SherpaMetaData (the shapes sherpa-ncnn
itself gives its zero states). torch is imported lazily.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

PNNX_INPUT = re.compile(r"^pnnx\.Input\s+\S+\s+0\s+1\s+\S+\s+#(\d+)=\(([^)]*)\)(\w+)", re.M)
PNNX_DTYPES = {"f32": "float32", "f16": "float16", "f64": "float64", "i64": "int64", "i32": "int32",
               "i16": "int16", "i8": "int8", "u8": "uint8", "bool": "bool"}
LENGTH_NAMES = ("x_lens", "lengths", "x_len", "lens")


class TracedError(Exception):
    """A traced module could not be loaded or called; the message names the file, the cause and a way out."""


@dataclass
class Slot:
    """One argument of ``forward`` (after ``self``)."""
    name: str
    kind: str  # "tensor", "list", "tuple", "const"
    width: int  # how many flat inputs it takes (list: filled in once shapes are known)
    const: object = None  # the value passed for a "const" argument


@dataclass
class InputSpec:
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name


@dataclass
class Traced:
    path: Path
    module: object
    slots: list[Slot]
    specs: list[InputSpec] = field(default_factory=list)  # one per flat input (pnnx's inK)
    shape_source: str = ""

    # -- structure -------------------------------------------------------------
    @property
    def n_inputs(self) -> int:
        return sum(s.width for s in self.slots if s.kind != "const")

    def signature(self) -> str:
        parts = []
        for s in self.slots:
            parts.append({"tensor": s.name, "list": f"{s.name}: List[Tensor] ({s.width})",
                          "tuple": f"{s.name}: Tuple ({s.width})", "const": f"{s.name}={s.const!r}"}[s.kind])
        return f"forward({', '.join(parts)})"

    def _flat_slots(self) -> list[Slot]:
        out = []
        for s in self.slots:
            if s.kind != "const":
                out += [s] * s.width
        return out

    def lengths_index(self) -> int | None:
        """The flat index of a lengths input (LSTM's ``x_lens``), if any."""
        for k, s in enumerate(self._flat_slots()):
            if k > 0 and s.kind == "tensor" and (s.name.rstrip(".0123456789") in LENGTH_NAMES
                                                   or (self.specs and self.specs[k].dtype.startswith("int"))):
                return k
        return None

    def state_indices(self) -> list[int]:
        """Flat indices of the inputs that are streaming states (fed back from output k into input k)."""
        lengths = self.lengths_index()
        return [k for k in range(1, self.n_inputs) if k != lengths]

    # -- calling ---------------------------------------------------------------
    def structure(self, flat: list) -> list:
        if len(flat) != self.n_inputs:
            raise TracedError(f"{self.path}: {self.signature()} takes {self.n_inputs} tensors "
                              f"(pnnx's in0..in{self.n_inputs - 1}); {len(flat)} were given")
        args, pos = [], 0
        for s in self.slots:
            if s.kind == "const":
                args.append(s.const)
            elif s.kind == "tensor":
                args.append(flat[pos])
            elif s.kind == "list":
                args.append(list(flat[pos:pos + s.width]))
            else:
                args.append(tuple(flat[pos:pos + s.width]))
            pos += 0 if s.kind == "const" else s.width
        return args

    def __call__(self, flat: list) -> list:
        """Call with pnnx-numbered inputs (torch tensors); returns the outputs in pnnx's out0..outK order."""
        import torch
        args = self.structure(flat)
        try:
            with torch.no_grad():
                result = self.module(*args)
        except Exception as exc:  # noqa: BLE001 - TorchScript raises plain RuntimeErrors
            first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
            shapes = ", ".join(f"in{k}{tuple(t.shape)}" for k, t in enumerate(flat))
            raise TracedError(f"{self.path}: calling {self.signature()} failed: {first} (inputs {shapes}; shapes "
                              f"from {self.shape_source or 'the caller'}). If the shapes are wrong, give pnnx's graph "
                              "(*.pnnx.param) or a reference npz beside the .pt") from None
        return flatten(result)

    def zeros(self) -> list:
        """All-zero inputs of the recorded shapes (zero states are what icefall and sherpa-ncnn start from)."""
        import numpy as np
        import torch
        self._need_specs()
        return [torch.from_numpy(np.zeros(s.shape, dtype=s.dtype)) for s in self.specs]

    def _need_specs(self) -> None:
        if not self.specs:
            raise TracedError(f"{self.path}: the input shapes of {self.signature()} are unknown (torch does not "
                              "record them for list/tuple arguments); put pnnx's graph (encoder.pnnx.param or "
                              "*_jit_trace-pnnx.pnnx.param) or encoder-reference.npz beside the .pt")


def flatten(x) -> list:
    if isinstance(x, (list, tuple)):
        out = []
        for item in x:
            out += flatten(item)
        return out
    return [x]


# -- loading --------------------------------------------------------------------

def _slot(arg, net_hint: str) -> Slot:
    import torch
    t = arg.type
    kind = t.kind()
    if kind == "TensorType" and arg.name.rstrip(".0123456789") == "need_pad":
        # the decoder's need_pad: a constant of the trace that pnnx folds away (no ncnn input)
        return Slot(arg.name, "const", 0, torch.tensor([False]))
    if kind == "TensorType":
        return Slot(arg.name, "tensor", 1)
    if kind == "ListType" and t.getElementType().kind() == "TensorType":
        return Slot(arg.name, "list", -1)
    if kind == "TupleType" and all(e.kind() == "TensorType" for e in t.elements()):
        return Slot(arg.name, "tuple", len(t.elements()))
    if kind in ("BoolType", "IntType", "FloatType", "OptionalType", "NoneType"):
        default = arg.default_value if arg.has_default_value() else {"BoolType": False, "IntType": 0,
                                                                     "FloatType": 0.0}.get(kind)
        return Slot(arg.name, "const", 0, default)
    raise TracedError(f"{net_hint}: argument {arg.name!r} has type {t}, which the tool cannot build "
                      f"(supported: Tensor, List[Tensor], Tuple[Tensor, ...], bool/int/float); "
                      f"torch {torch.__version__}")


def load(path: str | Path, shape_files: list[Path] | None = None, metadata_specs: list[InputSpec] | None = None
         ) -> Traced:
    """Load ``path`` and work out its structure and input shapes.

    ``shape_files``: candidate ``*.pnnx.param`` / ``*.npz`` files (the first that exists and fits is used);
    ``metadata_specs``: shapes derived from the model's metadata, the last resort.
    """
    path = Path(path)
    if not path.is_file():
        raise TracedError(f"{path}: not found; give the folder with icefall's *_jit_trace-pnnx.pt (--traced-dir)")
    import torch
    try:
        module = torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:  # noqa: BLE001
        first = next((ln.strip() for ln in str(exc).splitlines() if ln.strip()), type(exc).__name__)
        raise TracedError(f"{path}: torch could not load it ({first}); it should be a TorchScript file written by "
                          "torch.jit.trace, as icefall's export-for-ncnn.py writes them") from None
    try:
        arguments = list(module.forward.schema.arguments)[1:]
    except Exception as exc:  # noqa: BLE001
        raise TracedError(f"{path}: its forward signature cannot be read ({exc})") from None
    slots = [_slot(a, str(path)) for a in arguments]
    traced = Traced(path, module, slots)
    del module  # _restore may swap it for a reload: one copy of the weights at a time
    if all(s.kind in ("tensor", "const") for s in slots):
        _restore(traced)
    if not traced.specs:
        for f in shape_files or []:
            specs = _specs_from_file(Path(f))
            if specs and _fits(traced, specs):
                traced.specs, traced.shape_source = specs, str(f)
                break
    if not traced.specs and metadata_specs and _fits(traced, metadata_specs):
        traced.specs, traced.shape_source = list(metadata_specs), "the model's metadata"
    if traced.specs:
        _set_list_width(traced, len(traced.specs))
    return traced


def _restore(traced: Traced) -> None:
    """Shapes and dtypes recorded at trace time (only possible when every argument is a Tensor)."""
    import torch
    traced.module = None  # the first load goes before the second (a second copy of the weights doubled the peak)
    try:
        m = torch.jit.load(str(traced.path), map_location="cpu", _restore_shapes=True).eval()
    except Exception:  # noqa: BLE001 - older torch, or a trace without recorded shapes
        traced.module = torch.jit.load(str(traced.path), map_location="cpu").eval()
        return
    traced.module = m  # the same module, with the recorded shapes
    specs = []
    values = list(m.graph.inputs())[1:]
    for slot, value in zip(traced.slots, values):
        t = value.type()
        sizes = t.sizes() if hasattr(t, "sizes") else None
        dtype = t.dtype() if hasattr(t, "dtype") else None
        if slot.kind != "tensor":
            continue
        if dtype == torch.bool:  # a bool flag like need_pad: a constant of the trace, folded away by pnnx
            slot.kind, slot.width, slot.const = "const", 0, torch.tensor([False])
            continue
        if sizes is None or dtype is None:
            return
        specs.append(InputSpec(tuple(int(s) for s in sizes), str(dtype).replace("torch.", "")))
    traced.module = m
    traced.specs, traced.shape_source = specs, "the shapes recorded in the trace"


def _specs_from_file(f: Path) -> list[InputSpec]:
    if not f.is_file():
        return []
    if f.suffix == ".npz":
        import numpy as np
        try:
            ref = np.load(f)
            n = len([k for k in ref.files if k.startswith("chunk0_in")])
            return [InputSpec(tuple(ref[f"chunk0_in{k}"].shape), str(ref[f"chunk0_in{k}"].dtype)) for k in range(n)]
        except Exception:  # noqa: BLE001 - an unreadable npz is just not a source
            return []
    try:
        text = f.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    found = {}
    for m in PNNX_INPUT.finditer(text):
        dims = tuple(int(d) for d in m.group(2).split(",") if d.strip()) if m.group(2).strip() else ()
        found[int(m.group(1))] = InputSpec(dims, PNNX_DTYPES.get(m.group(3), "float32"))
    return [found[k] for k in sorted(found)] if sorted(found) == list(range(len(found))) else []


def _fits(traced: Traced, specs: list[InputSpec]) -> bool:
    fixed = sum(s.width for s in traced.slots if s.kind in ("tensor", "tuple"))
    has_list = any(s.kind == "list" for s in traced.slots)
    return len(specs) >= fixed if has_list else len(specs) == fixed


def _set_list_width(traced: Traced, total: int) -> None:
    lists = [s for s in traced.slots if s.kind == "list"]
    if len(lists) > 1:
        raise TracedError(f"{traced.path}: {len(lists)} List[Tensor] arguments; only one can be sized from the "
                          "flat input count")
    if lists:
        lists[0].width = total - sum(s.width for s in traced.slots if s.kind in ("tensor", "tuple"))


# -- shapes from sherpa-ncnn's metadata -------------------------------------------

def specs_from_metadata(arch: str, meta: dict, lengths_dtype: str = "int64") -> list[InputSpec]:
    """The encoder inputs sherpa-ncnn builds for this metadata (zero states), in torch layout with the batch axis.

    Mirrors how sherpa-ncnn sizes its initial states from SherpaMetaData (reference §2.2-2.4); the
    architecture's module knows the shapes.
    """
    from core.model.architectures import get_arch
    try:
        spec = get_arch(arch)
    except KeyError:
        return []
    return [InputSpec(shape, dtype) for shape, dtype in spec.torch_input_shapes(meta, lengths_dtype)]


def shape_files_near(pt: Path, *more_dirs: Path) -> list[Path]:
    """Where pnnx's graph or a reference npz for ``pt`` usually sits: beside it, its parent, a sibling ``pnnx/``."""
    stem = pt.name.split("_jit_trace")[0]  # encoder / decoder / joiner
    dirs = [pt.parent, pt.parent.parent, pt.parent.parent / "pnnx", *more_dirs]
    names = [f"{stem}.pnnx.param", f"{stem}_jit_trace-pnnx.pnnx.param", f"{stem}_jit_trace_pnnx.pnnx.param",
             f"{stem}-reference.npz"]
    seen, out = set(), []
    for d in dirs:
        for n in names:
            p = d / n
            if p not in seen:
                seen.add(p)
                out.append(p)
    return out
