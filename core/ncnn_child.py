"""ncnn on a user's model runs in a child process: a crash ends the child, never the tool.

ncnn trusts its ``.param``: a layer missing a parameter it needs (a Slice without its slices array,
say) loads fine and then takes the whole process down in its forward (SIGSEGV), and other faults end it
with SIGABRT or exit(-1). So the tool never runs ncnn on a user's model in its own process: calibration
and quantization run as ``python -m core.ncnn_child calibrate|quantize ...`` (their log lines and progress
relayed as they come, cancel stops the child's process group), and when a child dies, :func:`locate_crash`
runs the graph again layer by layer, every attempt in a fresh child (``probe``): each layer's outputs
extracted in execution order up to a point, bisecting for the first layer whose run crashes. The failure
becomes one sentence naming the step, the file and that layer.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .calibrate import CalibrationError

ROOT = Path(__file__).resolve().parents[1]
EXIT_ERROR = 1  # the child reported an error itself (an "error: ..." line)
EXIT_LOAD = 3  # ncnn refused to load the param or the bin
EXIT_EXTRACT = 4  # a layer returned an error code (no crash)
PROGRESS_RE = re.compile(r"^progress: (\d+)/(\d+) ?(.*)$")
AT_RE = re.compile(r"^at (\d+)$")
KILL_GRACE_SECONDS = 1.5


class ChildCancelled(Exception):
    """The user cancelled while a child ran; the child's process group was stopped."""


class NcnnCrash(RuntimeError):
    """ncnn ended a child abnormally; the message is the sentence for the user."""


# -- running a child -----------------------------------------------------------------------

def child_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "core.ncnn_child", *map(str, args)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_child(args: list[str], on_line: Callable[[str], None] | None = None,
              cancelled: Callable[[], bool] | None = None, timeout: float | None = None) -> tuple[int, list[str]]:
    """Run ``python -m core.ncnn_child ARGS``; every output line goes to ``on_line``. Returns (exit code, lines).

    A negative exit code is the signal that ended the child. Cancelling stops its whole process group.
    """
    proc = subprocess.Popen(child_argv(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=_env(), cwd=str(ROOT), start_new_session=True)
    lines: list[str] = []

    def read() -> None:
        for raw in proc.stdout:
            line = raw.decode("utf-8", errors="replace").rstrip("\r\n")
            lines.append(line)
            if on_line is not None:
                on_line(line)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    waited = 0.0
    try:
        while True:
            try:
                proc.wait(timeout=0.1)
                break
            except subprocess.TimeoutExpired:
                waited += 0.1
                if cancelled is not None and cancelled():
                    _stop(proc)
                    raise ChildCancelled()
                if timeout is not None and waited > timeout:
                    _stop(proc)
                    lines.append(f"error: no answer after {timeout:.0f} s; stopped")
                    return -int(signal.SIGKILL), lines
    finally:
        reader.join(timeout=5)
    return proc.returncode, lines


def _stop(proc: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, KILL_GRACE_SECONDS), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def crashed(rc: int) -> bool:
    """An abnormal end: a signal, or an exit code the child never uses for a reported error."""
    return rc not in (0, EXIT_ERROR, 2, EXIT_LOAD, EXIT_EXTRACT)


def exit_text(rc: int) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        extra = {"SIGSEGV": " (a segmentation fault)", "SIGABRT": " (an abort)", "SIGFPE": " (an arithmetic fault)",
                 "SIGBUS": " (a bus error)", "SIGKILL": ""}.get(name, "")
        return f"killed by {name}{extra}"
    if rc == 255:
        return "exit code 255 (exit(-1))"
    return f"exit code {rc}"


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

    from .ncnn_param import load_param
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
    from .metadata import read_metadata
    meta = read_metadata(model)
    if meta and meta.get(0) in (1, 2, 3):
        from .architectures import BY_MODEL_TYPE
        from .calibration_run import _initial_states
        arch = BY_MODEL_TYPE[meta[0]]
        segment, _ = arch.segment_offset(arch.values_from_metadata(meta))
        states = _initial_states(arch, meta)
        feeds = {"in0": rng.standard_normal((segment, 80)).astype(np.float32)}
        feeds.update({f"in{k}": s for k, s in enumerate(states, start=1)})
        return {k: v for k, v in feeds.items() if k in inputs}
    graph = _pnnx_graph_for(Path(param))
    if graph is not None:
        from .rewrite_zipformer import pnnx_input_shapes, read_pnnx_ops, state_layout
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
    why: str | None = None  # what core.layer_requirements says about that layer, if anything
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

    from .layer_requirements import check_layer
    from .ncnn_param import load_param
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
            report.load_error = "; ".join(said[-3:] + [_error_line(lines) or "load_param/load_model returned an "
                                                                                "error"])
            return report
        if rc == 0:
            report.ran = True
            return report
        if not crashed(rc) and rc != EXIT_EXTRACT:
            report.notes.append(_error_line(lines) or exit_text(rc))
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
            report.extract_error = _error_line(out) or "it returned an error"
        else:
            report.exit = exit_text(code)
        reasons = check_layer(layer)
        report.why = reasons[0] if reasons else None
        say(report.sentence())
    return report


def _error_line(lines: list[str]) -> str | None:
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    return None


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


# -- calibration and quantization in a child ----------------------------------------------------

class CalibrationCrashed(CalibrationError):
    """ncnn crashed during calibration or quantization; the message names the step, the file and the layer."""


def calibrate_in_child(files, wavs: list[Path], on_progress: Callable[[int, int, str], None] | None = None,
                       cancelled: Callable[[], bool] | None = None, cache_dir: Path | None = None,
                       tables: tuple[Path, Path] | None = None, on_line: Callable[[str], None] | None = None,
                       step: str = "calibrate"):
    """core.calibration_run.calibrate, run in a child process; the same CalibrationResult back.

    Progress lines become ``on_progress`` calls as they come, every other line goes to ``on_line``. A
    reported problem raises CalibrationError with the child's sentence; a crash raises CalibrationCrashed (a
    CalibrationError) naming the step, the file and the first layer that crashes; cancelling raises
    ChildCancelled. ``tables``: where the child writes the two tables (a temporary place when None).
    """
    import json

    from .calibrate import read_table
    from .calibration_run import CalibrationResult
    summary: dict = {}

    def line(text: str) -> None:
        m = PROGRESS_RE.match(text)
        if m:
            if on_progress is not None:
                on_progress(int(m.group(1)), int(m.group(2)), m.group(3))
        elif text.startswith("result: "):
            summary.update(json.loads(text[len("result: "):]))
        elif on_line is not None:
            on_line(text)

    with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
        enc_table, join_table = tables or (Path(tmp) / "encoder-scale-table.txt", Path(tmp) / "joiner-scale-table.txt")
        args = ["calibrate", "--files", *map(str, (files.encoder_param, files.encoder_bin, files.decoder_param,
                                                   files.decoder_bin, files.joiner_param, files.joiner_bin)),
                "--tables", str(enc_table), str(join_table)]
        args += [a for w in wavs for a in ("--wav", str(w))]
        if cache_dir is not None:
            args += ["--cache-dir", str(cache_dir)]
        rc, lines = run_child(args, on_line=line, cancelled=cancelled)
        if rc == EXIT_ERROR:
            raise CalibrationError(_error_line(lines) or "calibration failed")
        if rc != 0:
            say = on_line or (lambda _s: None)
            say(f"ncnn ended the calibration child ({exit_text(rc)}); running the model layer by layer in child "
                "processes to find the layer")
            nets = [(files.encoder_param, files.encoder_bin), (files.decoder_param, files.decoder_bin),
                    (files.joiner_param, files.joiner_bin)]
            raise CalibrationCrashed(crash_sentence(step, nets, rc))
        encoder = read_table(Path(enc_table).read_text(), str(enc_table))
        joiner = read_table(Path(join_table).read_text(), str(join_table))
    for part, table in (("encoder", encoder), ("joiner", joiner)):
        for name, (absmax, threshold) in summary.get("activations", {}).get(part, {}).items():
            if name in table.activations:
                table.activations[name].absmax, table.activations[name].threshold = absmax, threshold
    return CalibrationResult(encoder, joiner, summary.get("files", 0), summary.get("chunks", 0),
                             summary.get("frames", 0), summary.get("seconds", 0.0),
                             summary.get("forward_seconds", 0.0), summary.get("skipped", []))


def quantize_in_child(param: Path, binary: Path, table_path: Path, out_param: Path, out_bin: Path,
                      step: str = "quantize", cancelled: Callable[[], bool] | None = None) -> dict:
    """core.quantize.quantize of one net in a child process: its report as a dict. A reported problem raises
    CalibrationError with the child's sentence, a crash one naming the step and the file."""
    import json

    result: dict = {}
    rc, lines = run_child(["quantize", str(param), str(binary), str(table_path), str(out_param), str(out_bin)],
                          on_line=lambda t: result.update(json.loads(t[8:])) if t.startswith("result: ") else None,
                          cancelled=cancelled)
    if rc == EXIT_ERROR:
        raise CalibrationError(_error_line(lines) or "quantization failed")
    if rc != 0:
        said = [x for x in lines if x.strip() and not x.startswith("result: ")][-3:]
        raise CalibrationCrashed(f"{step}: ncnn crashed ({exit_text(rc)}) in a child process while reading the weights of "
                           f"{param} with {binary}" + (f": {'; '.join(said)}" if said else ""))
    return result


def record_loads_in_child(param: Path, binary: Path):
    """core.quantize.record_loads in a child process: (every layer's weight loads, bytes ncnn read)."""
    import json

    from .quantize import LayerLoads, Load, QuantizeError
    result: list = []
    rc, lines = run_child(["loads", str(param), str(binary)],
                          on_line=lambda t: result.append(json.loads(t[8:])) if t.startswith("result: ") else None)
    if rc == EXIT_ERROR:
        raise QuantizeError(_error_line(lines) or f"ncnn could not read the weights of {param}")
    if rc != 0 or not result:
        raise NcnnCrash(f"ncnn crashed ({exit_text(rc)}) in a child process while loading {param} with {binary}")
    layers = [LayerLoads(e["name"], e["type"], {int(k): v for k, v in e["params"].items()},
                         [Load(*ld) for ld in e["loads"]]) for e in result[-1]["layers"]]
    return layers, result[-1]["consumed"]


# -- the child's side ------------------------------------------------------------------------

def _mat(arr):
    from .calibration_run import as_mat
    return as_mat(arr)


def _say(text: str) -> None:
    os.write(1, (text + "\n").encode())  # unbuffered: the last line written before a crash is kept


def child_probe(param: Path, binary: Path, feeds_npz: Path, upto: int) -> int:
    """Load ``param``, feed the arrays, and extract every output of layers 0..upto in file (= execution) order."""
    import ncnn
    import numpy as np

    from .calibration_run import Keeper, register_meta_layer
    keep = Keeper()
    net = keep.keep(ncnn.Net())
    net.opt.num_threads = 1
    register_meta_layer(net, keep)
    if net.load_param(str(param)) != 0:
        _say(f"error: load_param failed for {param} (a layer type this ncnn lacks, or a malformed line)")
        return EXIT_LOAD
    if net.load_model(str(binary)) != 0:
        _say(f"error: load_model failed for {binary} (the weights do not match the param)")
        return EXIT_LOAD
    feeds = dict(np.load(feeds_npz))
    ex = net.create_extractor()
    ex.set_light_mode(False)  # every layer's outputs stay: extracting layer i runs layer i alone
    mats = []
    for name, arr in feeds.items():
        mats.append(_mat(arr))
        ex.input(name, mats[-1])
    for i, layer in enumerate(net.layers()):
        if i > upto:
            break
        if not layer.tops:
            continue
        _say(f"at {i}")
        blobs = net.blobs()
        for top in layer.tops:
            ret, _ = ex.extract(blobs[top].name)
            if ret != 0:
                _say(f"error: layer {layer.name} ({layer.type}) returned {ret} for its output {blobs[top].name}")
                return EXIT_EXTRACT
    _say("ok")
    return 0


def child_calibrate(a) -> int:
    from .atomic import atomic_write_bytes
    from .calibrate import CalibrationError
    from .calibration_run import ModelFiles, calibrate
    files = ModelFiles(*map(Path, a.files))
    try:
        result = calibrate(files, list(map(Path, a.wav)), on_progress=lambda i, n, note: _say(f"progress: {i}/{n} {note}"),
                           cache_dir=Path(a.cache_dir) if a.cache_dir else None)
    except CalibrationError as exc:
        _say(f"error: {exc}")
        return EXIT_ERROR
    atomic_write_bytes(Path(a.tables[0]), result.encoder.text().encode())
    atomic_write_bytes(Path(a.tables[1]), result.joiner.text().encode())
    import json
    summary = {"files": result.files, "chunks": result.chunks, "frames": result.frames,
               "seconds": result.seconds, "forward_seconds": result.forward_seconds, "skipped": result.skipped,
               "activations": {part: {a.layer: [a.absmax, a.threshold] for a in table.activations.values()}
                               for part, table in (("encoder", result.encoder), ("joiner", result.joiner))}}
    _say("result: " + json.dumps(summary))
    return 0


def child_quantize(a) -> int:
    import json

    from .calibrate import read_table
    from .quantize import QuantizeError, quantize
    try:
        table = read_table(Path(a.table).read_text(), str(a.table))
        report = quantize(Path(a.param), Path(a.bin), table, Path(a.out_param), Path(a.out_bin))
    except (CalibrationError, QuantizeError) as exc:
        _say(f"error: {exc}")
        return EXIT_ERROR
    _say("result: " + json.dumps({k: v for k, v in vars(report).items() if isinstance(v, (int, str, list))}))
    return 0


def child_loads(a) -> int:
    import json

    from .quantize import QuantizeError, record_loads
    try:
        layers, consumed = record_loads(Path(a.param), Path(a.bin).read_bytes())
    except (QuantizeError, OSError) as exc:
        _say(f"error: {exc}")
        return EXIT_ERROR
    _say("result: " + json.dumps({"consumed": consumed, "layers": [
        {"name": e.name, "type": e.type, "params": e.params, "loads": [[ld.w, ld.type, ld.start, ld.end]
                                                                      for ld in e.loads]} for e in layers]}))
    return 0


def child_int8_check(a) -> int:
    import json
    from dataclasses import asdict

    from .calibration_run import ModelFiles
    from .int8_check import compare_int8_here
    try:
        sims = compare_int8_here(ModelFiles(*map(Path, a.fp32)), tuple(map(Path, a.int8_encoder)),
                                 tuple(map(Path, a.int8_joiner)), list(map(Path, a.wav)))
    except (ValueError, CalibrationError) as exc:
        _say(f"error: {exc}")
        return EXIT_ERROR
    _say("result: " + json.dumps([asdict(s) for s in sims]))
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m core.ncnn_child", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("probe", help="extract every layer's outputs up to --upto, in execution order")
    pr.add_argument("param")
    pr.add_argument("bin")
    pr.add_argument("feeds", help="an .npz with one array per input blob")
    pr.add_argument("--upto", type=int, default=1 << 30)
    ca = sub.add_parser("calibrate", help="core.calibration_run.calibrate; progress as 'progress: i/n note' lines")
    ca.add_argument("--files", nargs=6, required=True, metavar="PATH",
                    help="encoder param/bin, decoder param/bin, joiner param/bin")
    ca.add_argument("--wav", action="append", default=[])
    ca.add_argument("--cache-dir", default=None)
    ca.add_argument("--tables", nargs=2, required=True, metavar=("ENCODER_TABLE", "JOINER_TABLE"))
    qu = sub.add_parser("quantize", help="core.quantize.quantize of one net")
    for name in ("param", "bin", "table", "out_param", "out_bin"):
        qu.add_argument(name)
    ic = sub.add_parser("int8-check", help="core.int8_check: cosine of the int8 encoder/joiner vs fp32")
    ic.add_argument("--fp32", nargs=6, required=True, metavar="PATH")
    ic.add_argument("--int8-encoder", nargs=2, required=True, metavar="PATH")
    ic.add_argument("--int8-joiner", nargs=2, required=True, metavar="PATH")
    ic.add_argument("--wav", action="append", default=[])
    lo = sub.add_parser("loads", help="core.quantize.record_loads: every layer's weight loads as JSON")
    lo.add_argument("param")
    lo.add_argument("bin")
    a = p.parse_args(argv)
    if a.command == "loads":
        return child_loads(a)
    if a.command == "int8-check":
        return child_int8_check(a)
    if a.command == "probe":
        return child_probe(Path(a.param), Path(a.bin), Path(a.feeds), a.upto)
    if a.command == "calibrate":
        return child_calibrate(a)
    return child_quantize(a)


if __name__ == "__main__":
    sys.exit(main())
