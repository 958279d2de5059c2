"""Which layer crashes ncnn: a graph run layer by layer, every attempt in a fresh child process.

When ncnn ends a child abnormally (core/ncnn/child.py), :func:`locate_crash` runs the graph again in fresh
children (``python -m core.ncnn.child probe``): each layer's outputs extracted in file (= execution) order up
to a point. The first child runs everything and prints each layer's index before running it; its last index
is confirmed by two more children, and when that does not hold the crashing prefix is bisected. The inputs
are the ones sherpa-ncnn feeds (:func:`feeds_for`: from the metadata, or pnnx's graph beside the file).
"""
from __future__ import annotations

import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core.ncnn.child import AT_RE, EXIT_EXTRACT, EXIT_LOAD, crashed, error_line, exit_text, run_child

# -- inputs for a graph (no ncnn needed) ------------------------------------------------------

class NoInputs(Exception):
    """The input shapes of a graph cannot be told; the message says what would tell them."""


def _net_kind(param: Path, model) -> str:
    name = param.name.lower()
    for kind in ("encoder", "decoder", "joiner"):
        if name.startswith(kind):
            return kind
    if any(layer.type == "SherpaMetaData" for layer in model.layers):
        return "encoder"
    if any(layer.type == "Embed" for layer in model.layers):
        return "decoder"
    return "joiner" if len(model.input_names) == 2 else "encoder"


def _input_dim(model, blob: str) -> int | None:
    """The width of ``blob``: the input size of the first InnerProduct/Gemm reading it (through Splits)."""
    todo, seen = [blob], set()
    while todo:
        b = todo.pop(0)
        if b in seen:
            continue
        seen.add(b)
        for layer in model.layers:
            if b not in layer.bottoms:
                continue
            if layer.type == "Split":
                todo.extend(layer.tops)
            elif layer.type == "InnerProduct" and isinstance(layer.get(2), int) and layer.get(0):
                return layer.get(2) // layer.get(0)
            elif layer.type == "Gemm" and isinstance(layer.get(9), int) and layer.get(9) > 0:
                return layer.get(9)
    return None


def _pnnx_graph_for(param: Path) -> Path | None:
    stem = param.name.split("_jit_trace")[0].split(".")[0]
    for candidate in (param.with_name(f"{stem}.pnnx.param"), param.with_name(param.name.replace(".ncnn.param",
                                                                                                 ".pnnx.param"))):
        if candidate.is_file() and candidate != param:
            return candidate
    return None


def feeds_for(param: Path, model=None) -> dict:
    """Arrays to feed each input of ``param`` (ncnn layout, batch axis dropped), as sherpa-ncnn would.

    Encoder: from its SherpaMetaData (one chunk of features, zero states, as calibration feeds), else from
    pnnx's own graph next to it (``encoder.pnnx.param``: the traced shapes). Decoder: two token ids.
    Joiner: one encoder frame and one decoder output, widths read off its first projections.
    """
    import numpy as np

    from core.ncnn.param import load_param
    if model is None:
        parsed = load_param(param)
        if parsed.model is None:
            raise NoInputs(parsed.describe())
        model = parsed.model
    kind = _net_kind(Path(param), model)
    inputs = model.input_names
    rng = np.random.default_rng(0)
    if kind == "decoder":
        return {name: np.zeros(2, dtype=np.int32) for name in inputs}
    if kind == "joiner":
        feeds = {}
        for name in inputs:
            dim = _input_dim(model, name)
            if dim is None:
                raise NoInputs(f"{param}: the width of joiner input {name} cannot be read off its first projection")
            feeds[name] = rng.standard_normal(dim).astype(np.float32)
        return feeds
    from core.model.metadata import read_metadata
    meta = read_metadata(model)
    if meta and meta.get(0) in (1, 2, 3):
        from core.model.architectures import BY_MODEL_TYPE
        arch = BY_MODEL_TYPE[meta[0]]
        segment, _ = arch.segment_offset(arch.values_from_metadata(meta))
        states = arch.initial_states(meta)
        feeds = {"in0": rng.standard_normal((segment, 80)).astype(np.float32)}
        feeds.update({f"in{k}": s for k, s in enumerate(states, start=1)})
        return {k: v for k, v in feeds.items() if k in inputs}
    graph = _pnnx_graph_for(Path(param))
    if graph is not None:
        from core.pnnx.graph import pnnx_input_shapes, read_pnnx_ops, state_layout
        ops = read_pnnx_ops(graph)
        shapes = pnnx_input_shapes(ops)
        text = Path(graph).read_text(errors="replace")
        if all(name in shapes for name in inputs):
            feeds = {}
            time_len = shapes["in0"][1] if len(shapes["in0"]) == 3 else 1
            for k, name in enumerate(inputs):
                shape = state_layout(shapes[name]) or (1,)
                integer = re.search(rf"pnnx_input_{k}\s.*#\S+=\([0-9,]*\)i(32|64)", text) is not None
                if integer:  # the lengths input: the traced time length
                    feeds[name] = np.full(shape, float(time_len), dtype=np.float32)
                elif k == 0:
                    feeds[name] = rng.standard_normal(shape).astype(np.float32)
                else:
                    feeds[name] = np.zeros(shape, dtype=np.float32)
            return feeds
    raise NoInputs(f"{param}: no SherpaMetaData and no pnnx graph (encoder.pnnx.param) next to it, so the shapes of "
                   "its inputs are unknown; add the metadata (sherpa-ncnn-wizard meta) or put pnnx's graph beside it")


# -- finding the crashing layer ----------------------------------------------------------------

@dataclass
class CrashReport:
    param: str
    ran: bool = False  # every layer ran in a child without a crash
    load_error: str | None = None
    extract_error: str | None = None  # a layer returned an error code
    exit: str | None = None  # how the crashing child ended
    index: int | None = None  # the first crashing layer's index in the file
    name: str | None = None
    type: str | None = None
    line: int | None = None
    why: str | None = None  # what core.ncnn.requirements says about that layer, if anything
    attempts: int = 0
    layers: int = 0
    notes: list[str] = field(default_factory=list)

    def sentence(self) -> str:
        if self.load_error:
            return f"ncnn could not load {self.param}: {self.load_error}"
        if self.index is not None:
            what = f"layer {self.name!r} ({self.type}) at line {self.line} of {self.param}"
            why = f": {self.why}" if self.why else ""
            verb = "fails" if self.extract_error else "crashes"
            how = self.extract_error or self.exit
            return (f"run layer by layer in a child process ({self.attempts} attempts), {what} is the first that "
                    f"{verb} ({how}){why}")
        if self.ran:
            return f"ncnn ran all {self.layers} layers of {self.param} in a child process without a crash"
        return f"{self.param}: " + ("; ".join(self.notes) or "the crash could not be pinned to one layer")

    def as_dict(self) -> dict:
        return {k: v for k, v in vars(self).items()} | {"sentence": self.sentence()}


def _probe(param: Path, binary: Path, feeds_npz: Path, upto: int, on_line=None, timeout: float = 300):
    return run_child(["probe", str(param), str(binary), str(feeds_npz), "--upto", str(upto)], on_line=on_line,
                     timeout=timeout)


def locate_crash(param: Path, binary: Path, feeds: dict | None = None, log: Callable[[str], None] | None = None,
                 timeout: float = 300, trust_marks: bool = True) -> CrashReport:
    """Run ``param`` layer by layer, each attempt in a fresh child; find the first layer whose run crashes.

    The first child runs the whole graph, printing the index of each layer before running it; the last index
    it printed is the candidate, confirmed by two fresh children (up to it: crashes; up to the one before:
    does not). When that does not hold, the prefix that crashes is bisected.
    """
    import numpy as np

    from core.ncnn.param import load_param
    from core.ncnn.requirements import check_layer
    param, binary = Path(param), Path(binary)
    report = CrashReport(str(param))
    parsed = load_param(param)
    if parsed.model is None:
        report.load_error = parsed.describe()
        return report
    model = parsed.model
    runnable = [i for i, layer in enumerate(model.layers) if layer.tops]
    report.layers = len(model.layers)
    if feeds is None:
        try:
            feeds = feeds_for(param, model)
        except NoInputs as exc:
            report.notes.append(str(exc))
            return report
    say = log or (lambda _s: None)
    with tempfile.TemporaryDirectory(prefix="ncnn-probe-") as tmp:
        npz = Path(tmp) / "feeds.npz"
        np.savez(npz, **feeds)
        cache: dict[int, tuple[int, list[str]]] = {}

        def attempt(upto: int) -> tuple[int, list[str]]:
            if upto not in cache:
                report.attempts += 1
                cache[upto] = _probe(param, binary, npz, upto, timeout=timeout)
            return cache[upto]

        last = runnable[-1] if runnable else -1
        rc, lines = attempt(last)
        if rc == EXIT_LOAD:
            said = [x.strip() for x in lines if x.strip() and not x.startswith(("error: ", "at "))]
            report.load_error = "; ".join(said[-3:] + [error_line(lines) or "load_param/load_model returned an "
                                                                                "error"])
            return report
        if rc == 0:
            report.ran = True
            return report
        if not crashed(rc) and rc != EXIT_EXTRACT:
            report.notes.append(error_line(lines) or exit_text(rc))
            return report
        fails = lambda code: code != 0 and code != EXIT_LOAD and (crashed(code) or code == EXIT_EXTRACT)  # noqa: E731
        marks = [int(m.group(1)) for m in map(AT_RE.match, lines) if m]
        first = None
        if marks and trust_marks:
            c = marks[-1]
            before = max((i for i in runnable if i < c), default=None)
            if fails(attempt(c)[0]) and (before is None or not fails(attempt(before)[0])):
                first = c
        if first is None:  # bisect over the runnable layers: lo never fails, hi fails
            lo, hi = -1, len(runnable) - 1
            while hi - lo > 1:
                mid = (lo + hi) // 2
                if fails(attempt(runnable[mid])[0]):
                    hi = mid
                else:
                    lo = mid
            first = runnable[hi]
        code, out = attempt(first)
        layer = model.layers[first]
        report.index, report.name, report.type, report.line = first, layer.name, layer.type, layer.line
        if code == EXIT_EXTRACT:
            report.extract_error = error_line(out) or "it returned an error"
        else:
            report.exit = exit_text(code)
        reasons = check_layer(layer)
        report.why = reasons[0] if reasons else None
        say(report.sentence())
    return report


def crash_sentence(step: str, files: list[tuple[Path, Path]], rc: int, log: Callable[[str], None] | None = None) -> str:
    """The sentence for a step whose ncnn child crashed: the step, how it ended, and the first crashing layer of
    the first of ``files`` (param, bin) that crashes when run layer by layer."""
    head = f"{step}: ncnn crashed ({exit_text(rc)}) in a child process"
    notes = []
    for param, binary in files:
        report = locate_crash(param, binary, log=log)
        if report.index is not None or report.load_error:
            return f"{head} on {param}; {report.sentence()}"
        if report.notes:
            notes += report.notes
    where = ", ".join(str(p) for p, _ in files)
    extra = f" ({'; '.join(notes)})" if notes else ""
    return f"{head}; run layer by layer, no single layer of {where} crashed on its own{extra}"
