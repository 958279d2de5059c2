"""Where each layer's weights lie in a .bin, told by ncnn's own layers without ncnn copying the weights.

core.ncnn.bin_layout.record_loads has ncnn read every weight into memory just to learn where each load ends (a
published-size fp32 encoder: 230 MB copied and converted, 0.3-0.4 s and ~290 MB per file). But a load's extent
follows from its call ``load(w, type)`` and, for a tagged load, its 4-byte tag (ncnn's ModelBinFromDataReader):
raw (type 1) 4w bytes; tag 0x01306B47 (fp16) 4 + align4(2w); 0x000D4B38 (int8) 4 + align4(w); 0x0002C056 and 0
(fp32) 4 + 4w; any other tag a 256-entry table and indices, 4 + 1024 + align4(w). So ncnn's own layers still decide
which loads happen (their load_param and load_model run as in record_loads); here the ModelBin answers each load
with an uninitialised Mat of the size and element size ncnn would return, reading only the tag. Anything unusual
(w <= 0, another load type, data ending early) is handed to ncnn's own ModelBin, so it fails or succeeds as ncnn
does. The result is record_loads' (tests compare the two on real fp32, fp16 and int8 models).

Also a child process that records several (param, bin) pairs at once: the int8-layers report reads six files, and
one child start-up (python + numpy + ncnn, ~0.1 s) instead of six is most of its time.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path


FP16, INT8, FP32_SCALED = 0x01306B47, 0x000D4B38, 0x0002C056


def _align4(n: int) -> int:
    return (n + 3) & ~3


def extent(tag: int, w: int) -> tuple[int, int]:
    """(bytes a tagged load of ``w`` values consumes, tag included; the element size of the Mat ncnn returns)."""
    if tag == FP16:
        return 4 + _align4(2 * w), 4
    if tag == INT8:
        return 4 + _align4(w), 1
    if tag in (FP32_SCALED, 0):
        return 4 + 4 * w, 4
    return 4 + 1024 + _align4(w), 4  # quantized: 256 float table + one index byte per value


class BinFile:
    """A .bin read only where asked (``f[a:b]`` is one pread): the tags of a published-size model without reading,
    or mapping, its hundreds of MB. Closed with the object."""

    def __init__(self, path: Path):
        self._fd = os.open(path, os.O_RDONLY)
        self._size = os.fstat(self._fd).st_size

    def __len__(self) -> int:
        return self._size

    def __getitem__(self, span: slice) -> bytes:
        start, stop = max(span.start or 0, 0), min(self._size if span.stop is None else span.stop, self._size)
        return os.pread(self._fd, stop - start, start) if stop > start else b""

    def __del__(self):
        fd, self._fd = getattr(self, "_fd", None), None
        if fd is not None:
            os.close(fd)


def open_bin(path: Path) -> BinFile:
    return BinFile(path)


def _reader(held: dict):
    """ncnn's DataReader over ``held["data"]`` (read through the numpy ``held["view"]`` when it is a buffer),
    keeping the position."""
    import ctypes

    import ncnn

    get_pointer, get_name = ctypes.pythonapi.PyCapsule_GetPointer, ctypes.pythonapi.PyCapsule_GetName
    get_pointer.restype, get_pointer.argtypes = ctypes.c_void_p, [ctypes.py_object, ctypes.c_char_p]
    get_name.restype, get_name.argtypes = ctypes.c_char_p, [ctypes.py_object]

    class Reader(ncnn.DataReader):
        def __init__(self):
            super().__init__()
            self.pos = 0

        def scan(self, fmt, p):
            return 0

        def read(self, buf, size):
            view, data = held["view"], held["data"]
            if view is not None:
                n = max(min(size, view.size - self.pos), 0)
                if n:
                    ctypes.memmove(get_pointer(buf, get_name(buf)), view.ctypes.data + self.pos, n)
            else:
                chunk = data[self.pos:self.pos + size] if size > 0 else b""
                n = len(chunk)
                if n:
                    ctypes.memmove(get_pointer(buf, get_name(buf)), chunk, n)
            self.pos += n
            return n

    return Reader()


def record_extents(param: Path, data, *, read_weights: bool = False) -> tuple[list, int]:
    """Every layer's weight loads, in load order, and how many bytes ncnn reads: record_loads' answer, with ncnn's
    layers loading placeholders sized from the tags instead of the weights. ``data``: the .bin's bytes, a mapped
    file or a :class:`BinFile` (anything with ``len`` and ``[a:b]``). ``read_weights``: ncnn's own ModelBin reads
    every load (the check of a file about to be written).

    Nothing here outlives the call: ncnn's python binding keeps registered layer creators, and all they reach,
    for the life of the process, so they reach ``data`` only through a dict emptied on return (as everything
    core.ncnn.bin_layout.load_recorded's creators reach)."""
    import mmap

    import numpy as np

    buffer = isinstance(data, (bytes, bytearray, memoryview, mmap.mmap)) and len(data) > 0
    held = {"data": data, "view": np.frombuffer(data, dtype=np.uint8) if buffer else None, "size": len(data)}
    try:
        return _record(Path(param), held, read_weights)
    finally:
        held.clear()


def _record(param: Path, held: dict, read_weights: bool) -> tuple[list, int]:
    """core.ncnn.bin_layout.load_recorded with a ModelBin that answers from the tags."""
    import ncnn

    from core.ncnn.bin_layout import Load, load_recorded
    reader = _reader(held)

    class ExtentModelBin(ncnn.ModelBin):
        def __init__(self, real, entry):
            super().__init__()
            self.real, self.entry = real, entry

        def load(self, w, type):
            start, size = reader.pos, held["size"]
            w, type = int(w), int(type)
            span = elemsize = None
            if read_weights:
                pass
            elif w > 0 and type == 1:
                span, elemsize = 4 * w, 4
            elif w > 0 and type == 0 and start + 4 <= size:
                span, elemsize = extent(int.from_bytes(held["data"][start:start + 4], "little"), w)
            if span is None or start + span > size:  # ncnn reads (and fails) as it does
                m = self.real.load(w, type)
            else:
                reader.pos = start + span
                m = ncnn.Mat(w, elemsize=elemsize)
            self.entry.loads.append(Load(w, type, start, reader.pos))
            return m

    return load_recorded(param, reader, ExtentModelBin)


def _as_json(layers: list, consumed: int) -> dict:
    return {"consumed": consumed, "layers": [
        {"name": e.name, "type": e.type, "params": e.params, "loads": [[ld.w, ld.type, ld.start, ld.end]
                                                                      for ld in e.loads]} for e in layers]}


def _from_json(entry: dict) -> tuple[list, int]:
    from core.ncnn.bin_layout import LayerLoads, Load
    layers = [LayerLoads(e["name"], e["type"], {int(k): v for k, v in e["params"].items()},
                         [Load(*ld) for ld in e["loads"]]) for e in entry["layers"]]
    return layers, entry["consumed"]


CHILD = "core.int8.layers_loads"


def extents_in_child(pairs: list[tuple[Path, Path]]) -> list[tuple[list, int]]:
    """:func:`record_extents` of each (param, bin) in one child process (ncnn on a user's model never runs in the
    tool's own process). Raises LayoutError with the child's sentence, core.ncnn.child.NcnnCrash on a crash."""
    from core.ncnn.bin_layout import LayoutError
    from core.ncnn.child import EXIT_ERROR, NcnnCrash, error_line, exit_text, run_child
    results: list[dict] = []
    rc, lines = run_child([str(p) for pair in pairs for p in pair], module=CHILD,
                          on_line=lambda t: results.append(json.loads(t[8:])) if t.startswith("result: ") else None)
    if rc == EXIT_ERROR:
        raise LayoutError(error_line(lines) or f"ncnn could not read the weights of {pairs[len(results)][0]}")
    if rc != 0 or len(results) != len(pairs):
        param, binary = pairs[min(len(results), len(pairs) - 1)]
        raise NcnnCrash(f"ncnn crashed ({exit_text(rc)}) in a child process while loading {param} with {binary}")
    return [_from_json(r) for r in results]


def main(argv: list[str] | None = None) -> int:
    """``python -m core.int8.layers_loads PARAM BIN [PARAM BIN ...]``: one ``result: {json}`` line per pair."""
    from core.ncnn.bin_layout import LayoutError
    from core.ncnn.child import EXIT_ERROR, say
    args = sys.argv[1:] if argv is None else argv
    if not args or len(args) % 2:
        say("error: usage: python -m core.int8.layers_loads PARAM BIN [PARAM BIN ...]")
        return EXIT_ERROR
    for param, binary in zip(args[::2], args[1::2]):
        try:
            layers, consumed = record_extents(Path(param), open_bin(Path(binary)))
        except (LayoutError, OSError, ValueError) as exc:
            say(f"error: {exc}")
            return EXIT_ERROR
        say("result: " + json.dumps(_as_json(layers, consumed)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
