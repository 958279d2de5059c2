"""Benchmark: wall time of the fp16 demo pipeline, per step, for each architecture.

Not a test. Run from the repository root:

    .venv/bin/python benchmarks/bench_demo.py [ARCH ...]

Each architecture runs `sherpa-ncnn-wizard run --demo ARCH` into a fresh
temporary directory (as a user would, in a child process) and the step times
are read from its manifest.json. Target: the whole fp16 demo run under 30 s
on 2 cores.
"""
from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TARGET_SECONDS = 30.0
REPO = Path(__file__).resolve().parents[1]


def main(argv: list[str]) -> int:
    archs = argv or ["zipformer", "conv-emformer", "lstm"]
    worst = 0.0
    for arch in archs:
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(tmp) / "out"
            t0 = time.perf_counter()
            proc = subprocess.run([sys.executable, "-m", "tui.cli.main", "run", "--demo", arch, "--out", str(out)],
                                  cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                print(f"{arch}: FAILED (exit {proc.returncode})\n{proc.stdout[-2000:]}")
                return 1
            manifest = json.loads((out / "manifest.json").read_text())
        worst = max(worst, wall)
        print(f"\n{arch}: {wall:.1f} s wall (command start to exit)")
        for step in manifest["steps"]:
            print(f"  {step['id']:<14}{step['seconds']:>7.2f} s")
    verdict = "UNDER" if worst < TARGET_SECONDS else "OVER"
    print(f"\nslowest demo run {worst:.1f} s: {verdict} the {TARGET_SECONDS:.0f} s target")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
