"""One pnnx conversion, checked: run pnnx; if its own graph shows the shape-inference mix-up, convert again
with the fallback pnnx on a copy of the .pt without the traced input shapes, and check that too.

Runs as the pnnx steps' child process (``python -m core.pnnx.convert``), so the
log pane shows pnnx's own output, its pass lines drive the progress bar, and
cancel stops the whole process group. Why the fallback works: pnnx's
shape-inference bug (core.pnnx.graph) needs the input shapes that
``torch.jit.trace`` stores in the .pt; without them pnnx 20241223 converts
icefall's ConvEmformer correctly, while newer wheels then mis-place an
ExpandDims. Models the default pnnx converts cleanly never reach the fallback.
Exit codes: 0 converted (and checked), 1 pnnx failed, 3 the mix-up and no
usable fallback.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import zipfile
from pathlib import Path

from core.pnnx.graph import describe, shape_mismatches

OUTPUT_KEYS = ("pnnxparam", "pnnxbin", "pnnxpy", "pnnxonnx", "ncnnparam", "ncnnbin", "ncnnpy")


def strip_traced_inputs(src: Path, dst: Path) -> int:
    """Copy a TorchScript zip without ``traced_inputs.pkl`` / ``traced_inputs/``; returns how many entries went."""
    dropped = 0
    tmp = dst.with_name(dst.name + ".tmp")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            inner = info.filename.split("/", 1)[1] if "/" in info.filename else info.filename
            if inner == "traced_inputs.pkl" or inner.startswith("traced_inputs/"):
                dropped += 1
                continue
            zout.writestr(info, zin.read(info.filename))
    tmp.replace(dst)
    return dropped


def _run(pnnx: str, pt: Path, outputs: dict[str, str], fp16: bool) -> int:
    argv = [pnnx, str(pt), *(f"{k}={outputs[k]}" for k in OUTPUT_KEYS), f"fp16={1 if fp16 else 0}"]
    print("$ " + " ".join(argv), flush=True)
    return subprocess.run(argv, stdin=subprocess.DEVNULL).returncode


def private_copy(pt: Path, directory: Path) -> Path:
    """``pt`` linked (else copied) into ``directory`` under its own name. pnnx writes ``<pt>.foldable_constants.zip``
    beside the .pt it converts and deletes it after: two conversions of one .pt at once (a run's fp16 and fp32
    encoder) would read each other's constants, so each converts its own link."""
    import shutil
    target = directory / pt.name
    if not pt.is_file() or not directory.is_dir() or target.resolve() == pt.resolve():
        return pt  # (pnnx itself says what is wrong with a missing .pt)
    target.unlink(missing_ok=True)
    try:
        target.hardlink_to(pt)
    except OSError:
        shutil.copyfile(pt, target)
    return target


def convert(pnnx: str, fallback: str | None, pt: Path, outputs: dict[str, str], fp16: bool) -> int:
    own = private_copy(pt, Path(outputs["pnnxbin"]).parent)
    try:
        rc = _run(pnnx, own, outputs, fp16)
    finally:
        if own != pt:
            own.unlink(missing_ok=True)
    if rc != 0:
        return 1 if rc > 0 else rc
    bad = shape_mismatches(outputs["pnnxparam"])
    if not bad:
        return 0
    print(f"warning: {describe(outputs['pnnxparam'], bad)}", flush=True)
    if not fallback or not Path(fallback).is_file():
        print(f"error: the fallback pnnx ({fallback or 'none configured'}) is not installed; install it with "
              f"`{sys.executable} -m pip install --no-deps --target {fallback_home()} pnnx=={FALLBACK_VERSION}` "
              "(./dev.sh does), then run again", flush=True)
        return 3
    stripped = Path(outputs["pnnxbin"]).with_name(pt.stem + "-no-traced-inputs.pt")
    dropped = strip_traced_inputs(pt, stripped)
    print(f"converting again with the fallback pnnx {fallback} on {stripped} ({dropped} traced-input entries "
          "removed, so pnnx skips its shape inference)", flush=True)
    rc = _run(fallback, stripped, outputs, fp16)
    if rc != 0:
        return 1 if rc > 0 else rc
    bad = shape_mismatches(outputs["pnnxparam"])
    if bad:
        print(f"error: the fallback did not help: {describe(outputs['pnnxparam'], bad)}", flush=True)
        return 3
    print("the fallback conversion's graph is consistent; validation compares its numbers with torch", flush=True)
    return 0


FALLBACK_VERSION = "20241223"


def fallback_home() -> Path:
    return Path(sys.prefix) / "opt" / f"pnnx-{FALLBACK_VERSION}"


def fallback_pnnx() -> Path:
    """Where ./dev.sh installs the fallback pnnx (a second wheel, unpacked beside the venv's own)."""
    return fallback_home() / "pnnx" / "pnnx"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.pnnx.convert", description=__doc__.splitlines()[0])
    p.add_argument("--pnnx", required=True)
    p.add_argument("--fallback", default=None)
    p.add_argument("--fp16", type=int, choices=(0, 1), default=1)
    p.add_argument("pt", type=Path)
    for key in OUTPUT_KEYS:
        p.add_argument(f"--{key}", required=True)
    a = p.parse_args(argv)
    outputs = {k: getattr(a, k) for k in OUTPUT_KEYS}
    rc = convert(a.pnnx, a.fallback, a.pt, outputs, bool(a.fp16))
    if rc < 0:  # pnnx died by a signal: die by the same one, so the step says "segmentation fault", not a code
        import os
        import signal
        signal.signal(-rc, signal.SIG_DFL)
        os.kill(os.getpid(), -rc)
    return rc


def pnnx_command(pnnx: Path, pt: Path, stem: Path, param: Path, binary: Path, fp16: bool) -> tuple[list[str], dict]:
    """(argv, env) of a checked pnnx step: pnnx's outputs under ``stem``, the ncnn files at param/binary."""
    outputs = {"pnnxparam": f"{stem}.pnnx.param", "pnnxbin": f"{stem}.pnnx.bin", "pnnxpy": f"{stem}_pnnx.py",
               "pnnxonnx": f"{stem}.pnnx.onnx", "ncnnparam": str(param), "ncnnbin": str(binary),
               "ncnnpy": f"{stem}_ncnn.py"}
    argv = [sys.executable, "-m", "core.pnnx.convert", "--pnnx", str(pnnx), "--fallback", str(fallback_pnnx()),
            "--fp16", "1" if fp16 else "0", str(pt), *(f"--{k}={v}" for k, v in outputs.items())]
    return argv, {"PYTHONPATH": str(Path(__file__).resolve().parents[2])}


if __name__ == "__main__":
    sys.exit(main())
