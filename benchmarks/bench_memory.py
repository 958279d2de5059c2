"""Peak memory of quantize and rewrite --apply on a published-size model (prints its figures; not a test).

    .venv/bin/python benchmarks/bench_memory.py [ARCH] [--model-dir D]

Without --model-dir the demo recipe is built at icefall's default size (random weights; see bench_calibrate.py),
converted with pnnx fp16=0, and each command runs as its own process; the peak RSS comes from wait4's rusage.
Target (issue: hostile input): well under 1 GB, and a small multiple of the .bin size.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CLI = [sys.executable, "-m", "tui.cli.main"]


def measure(argv: list[str]) -> tuple[float, float, int]:
    """(wall seconds, peak RSS in MB, exit code) of one child process."""
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return time.monotonic() - t0, usage.ru_maxrss / 1024, proc.returncode


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arch", nargs="?", default="lstm", choices=("lstm", "conv-emformer", "zipformer"))
    p.add_argument("--model-dir", type=Path, help="a directory with fp32 {encoder,joiner}_jit_trace-pnnx.ncnn.*")
    a = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-memory-"))
    try:
        d = a.model_dir
        if d is None:
            sys.path.insert(0, str(ROOT / "benchmarks"))
            from bench_calibrate import build_model
            d = build_model(a.arch, tmp, []).encoder_param.parent
        param, binary = d / "encoder_jit_trace-pnnx.ncnn.param", d / "encoder_jit_trace-pnnx.ncnn.bin"
        size_mb = binary.stat().st_size / 1e6
        table = tmp / "empty-table.txt"
        table.write_text("")  # weight-only int8 (LSTM/Gemm/Embed) and fp16 for the rest: every weight is touched
        print(f"{a.arch}: encoder .bin {size_mb:.0f} MB")
        wall, peak, rc = measure(CLI + ["quantize", str(param), str(binary), str(tmp / "q.param"), str(tmp / "q.bin"),
                                        str(table)])
        print(f"quantize        {wall:6.1f} s  peak {peak:7.0f} MB  ({peak / size_mb:.1f}x the .bin)  exit {rc}")
        work = tmp / "rw"
        work.mkdir()
        shutil.copy(param, work / param.name)
        shutil.copy(binary, work / binary.name)
        wall, peak, rc = measure(CLI + ["rewrite", str(work / param.name), "--apply"])
        print(f"rewrite --apply {wall:6.1f} s  peak {peak:7.0f} MB  ({peak / size_mb:.1f}x the .bin)  exit {rc}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
