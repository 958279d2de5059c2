"""What a traced TorchScript ``.pt`` records, read without torch: input shapes and module attributes.

``torch.jit.trace`` + ``save`` store the example inputs' shapes (``traced_inputs.pkl``, tensors with
empty storages) and every module's plain attributes (``data.pkl``: icefall keeps e.g.
``zipformer_downsampling_factors``, ``chunk_length`` there). Both are pickles; they are read with an
unpickler that builds only plain containers and shape records, so nothing from the file is executed and
``--help``-time imports stay light.
"""
from __future__ import annotations

import collections
import io
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path


class TracedArchiveError(Exception):
    """The file is not a TorchScript archive we can read; the message names the file."""


@dataclass(frozen=True)
class TensorShape:
    shape: tuple[int, ...]
    dtype: str  # the storage class name, e.g. "FloatStorage"


class _Module(dict):
    """A scripted module's attributes (its ``__getstate__`` dict); ``kind`` is the class name."""

    kind = ""

    def __setstate__(self, state) -> None:
        if isinstance(state, dict):
            self.update(state)


def _module_class(name: str):
    return type(name, (_Module,), {"kind": name, "__reduce__": None})


def _rebuild_tensor(storage, offset, size, stride, *rest):
    return TensorShape(tuple(int(s) for s in size), str(storage))


class _ShapeUnpickler(pickle.Unpickler):
    """Allows only what TorchScript archives use; tensors become TensorShape, modules plain dicts."""

    def find_class(self, module: str, name: str):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor", "_rebuild_qtensor"):
            return _rebuild_tensor
        if module == "torch.jit._pickle" and name == "restore_type_tag":
            return lambda value, _tag: value
        if module == "torch.jit._pickle" and name.startswith("build_"):
            return lambda value: value
        if module == "collections" and name == "OrderedDict":
            return collections.OrderedDict
        if module == "torch" and (name.endswith("Storage") or name in ("device", "Size")):
            return name if name.endswith("Storage") else (lambda *a: a)
        if module.startswith("__torch__"):
            return _module_class(name)
        raise pickle.UnpicklingError(f"unexpected object {module}.{name}")

    def persistent_load(self, pid):
        # ('storage', FloatStorage, key, location, numel): the storage class name is all we keep
        return pid[1] if isinstance(pid, tuple) and len(pid) > 1 else pid


@dataclass
class TracedArchive:
    path: Path
    inputs: list[object] = field(default_factory=list)  # forward's example inputs: TensorShape / lists / tuples
    attributes: dict = field(default_factory=dict)  # the traced (root) module's plain attributes

    def flat_shapes(self) -> list[tuple[int, ...]]:
        """The input tensors' shapes in the order pnnx numbers them (nested lists/tuples flattened)."""
        out: list[tuple[int, ...]] = []

        def walk(x) -> None:
            if isinstance(x, TensorShape):
                out.append(x.shape)
            elif isinstance(x, (list, tuple)):
                for y in x:
                    walk(y)
        walk(self.inputs)
        return out

    def submodule(self, dotted: str) -> dict:
        node: object = self.attributes
        for part in dotted.split("."):
            if not isinstance(node, dict) or part not in node:
                return {}
            node = node[part]
        return node if isinstance(node, dict) else {}


def read_traced(path: str | Path) -> TracedArchive:
    """Read the example input shapes and root attributes of a traced ``.pt``; raises TracedArchiveError."""
    p = Path(path)
    try:
        with zipfile.ZipFile(p) as z:
            names = z.namelist()
            root = names[0].split("/")[0] if names else ""
            inputs_pkl = f"{root}/traced_inputs.pkl"
            data = z.read(f"{root}/data.pkl")
            traced = z.read(inputs_pkl) if inputs_pkl in names else None
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        raise TracedArchiveError(f"{p}: not a TorchScript archive torch.jit.save wrote ({exc})") from None
    try:
        attributes = _ShapeUnpickler(io.BytesIO(data)).load()
        inputs = _ShapeUnpickler(io.BytesIO(traced)).load() if traced is not None else {}
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means "cannot read it"
        raise TracedArchiveError(f"{p}: cannot read its recorded inputs/attributes ({exc})") from None
    forward = inputs.get("forward", []) if isinstance(inputs, dict) else []
    return TracedArchive(p, list(forward) if isinstance(forward, (list, tuple)) else [forward],
                         dict(attributes) if isinstance(attributes, dict) else {})
