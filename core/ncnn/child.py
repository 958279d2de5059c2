"""ncnn on a user's model runs in a child process: a crash ends the child, never the tool.

ncnn trusts its ``.param``: a layer missing a parameter it needs (a Slice without its slices array,
say) loads fine and then takes the whole process down in its forward (SIGSEGV), and other faults end it
with SIGABRT or exit(-1). So the tool never runs ncnn on a user's model in its own process: calibration
and quantization run as ``python -m core.ncnn.child calibrate|quantize ...`` (their log lines and progress
relayed as they come, cancel stops the child's process group), and so do the int8 check and the weight-layout
reads. When a child dies, core/validation/crash.py runs the graph again layer by layer, every attempt in a fresh
child (``probe``), to find the first layer that crashes; the failure becomes one sentence naming the step,
the file and that layer.
"""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]
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

def child_argv(*args: str, module: str = "core.ncnn.child") -> list[str]:
    return [sys.executable, "-m", module, *map(str, args)]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_child(args: list[str], on_line: Callable[[str], None] | None = None,
              cancelled: Callable[[], bool] | None = None, timeout: float | None = None,
              module: str = "core.ncnn.child") -> tuple[int, list[str]]:
    """Run ``python -m core.ncnn.child ARGS``; every output line goes to ``on_line``. Returns (exit code, lines).

    A negative exit code is the signal that ended the child. Cancelling stops its whole process group.
    """
    proc = subprocess.Popen(child_argv(*args, module=module), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
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


def error_line(lines: list[str]) -> str | None:
    for line in reversed(lines):
        if line.startswith("error: "):
            return line[len("error: "):]
    return None


# -- calibration and quantization in a child ----------------------------------------------------


def record_loads_in_child(param: Path, binary: Path):
    """core.int8.quantize.record_loads in a child process: (every layer's weight loads, bytes ncnn read)."""
    import json

    from core.ncnn.bin_layout import LayerLoads, LayoutError, Load
    result: list = []
    rc, lines = run_child(["loads", str(param), str(binary)],
                          on_line=lambda t: result.append(json.loads(t[8:])) if t.startswith("result: ") else None)
    if rc == EXIT_ERROR:
        raise LayoutError(error_line(lines) or f"ncnn could not read the weights of {param}")
    if rc != 0 or not result:
        raise NcnnCrash(f"ncnn crashed ({exit_text(rc)}) in a child process while loading {param} with {binary}")
    layers = [LayerLoads(e["name"], e["type"], {int(k): v for k, v in e["params"].items()},
                         [Load(*ld) for ld in e["loads"]]) for e in result[-1]["layers"]]
    return layers, result[-1]["consumed"]


# -- the child's side ------------------------------------------------------------------------

def _mat(arr):
    from core.ncnn.net import as_mat
    return as_mat(arr)


def say(text: str) -> None:
    os.write(1, (text + "\n").encode())  # unbuffered: the last line written before a crash is kept


def child_probe(param: Path, binary: Path, feeds_npz: Path, upto: int) -> int:
    """Load ``param``, feed the arrays, and extract every output of layers 0..upto in file (= execution) order."""
    import ncnn
    import numpy as np

    from core.ncnn.net import Keeper, register_meta_layer
    keep = Keeper()
    net = keep.keep(ncnn.Net())
    net.opt.num_threads = 1
    register_meta_layer(net, keep)
    if net.load_param(str(param)) != 0:
        say(f"error: load_param failed for {param} (a layer type this ncnn lacks, or a malformed line)")
        return EXIT_LOAD
    if net.load_model(str(binary)) != 0:
        say(f"error: load_model failed for {binary} (the weights do not match the param)")
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
        say(f"at {i}")
        blobs = net.blobs()
        for top in layer.tops:
            ret, _ = ex.extract(blobs[top].name)
            if ret != 0:
                say(f"error: layer {layer.name} ({layer.type}) returned {ret} for its output {blobs[top].name}")
                return EXIT_EXTRACT
    say("ok")
    return 0


def child_loads(a) -> int:
    import json

    from core.ncnn.bin_layout import LayoutError, record_loads
    try:
        layers, consumed = record_loads(Path(a.param), Path(a.bin).read_bytes())
    except (LayoutError, OSError) as exc:
        say(f"error: {exc}")
        return EXIT_ERROR
    say("result: " + json.dumps({"consumed": consumed, "layers": [
        {"name": e.name, "type": e.type, "params": e.params, "loads": [[ld.w, ld.type, ld.start, ld.end]
                                                                      for ld in e.loads]} for e in layers]}))
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog="python -m core.ncnn.child", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    pr = sub.add_parser("probe", help="extract every layer's outputs up to --upto, in execution order")
    pr.add_argument("param")
    pr.add_argument("bin")
    pr.add_argument("feeds", help="an .npz with one array per input blob")
    pr.add_argument("--upto", type=int, default=1 << 30)
    lo = sub.add_parser("loads", help="core.ncnn.bin_layout.record_loads: every layer's weight loads as JSON")
    lo.add_argument("param")
    lo.add_argument("bin")
    a = p.parse_args(argv)
    if a.command == "loads":
        return child_loads(a)
    return child_probe(Path(a.param), Path(a.bin), Path(a.feeds), a.upto)


if __name__ == "__main__":
    sys.exit(main())
