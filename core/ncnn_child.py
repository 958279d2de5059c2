"""ncnn on a user's model runs in a child process: a crash ends the child, never the tool.

ncnn trusts its ``.param``: a layer missing a parameter it needs (a Slice without its slices array,
say) loads fine and then takes the whole process down in its forward (SIGSEGV), and other faults end it
with SIGABRT or exit(-1). So the tool never runs ncnn on a user's model in its own process: calibration
and quantization run as ``python -m core.ncnn_child calibrate|quantize ...`` (their log lines and progress
relayed as they come, cancel stops the child's process group), and so do the int8 check and the weight-layout
reads. When a child dies, core/ncnn_crash.py runs the graph again layer by layer, every attempt in a fresh
child (``probe``), to find the first layer that crashes; the failure becomes one sentence naming the step,
the file and that layer.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
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


def _error_line(lines: list[str]) -> str | None:
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    return None


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
            from .ncnn_crash import crash_sentence
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
