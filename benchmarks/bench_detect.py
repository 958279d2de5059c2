"""Benchmark: detect the architecture and hyperparameters of a ~280 MB Zipformer checkpoint.

Not a test. Run from the repository root:

    .venv/bin/python benchmarks/bench_detect.py [--repeats 3]

It writes (in a temp dir) a ``{"model": state_dict}`` pretrained.pt with the real key names and shapes of
icefall's default 5-stack 384-dim streaming Zipformer (about 70M fp32 parameters, random values), then times
``core.model.checkpoint.detect`` on it: a safe ``torch.load(weights_only=True, mmap=True)``, unwrapping and the
shape rules. The target is under 3 s. The first run includes importing torch.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args(argv)

    import torch
    from checkpoint_factory import zipformer_state
    from core.model.checkpoint import detect

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pretrained.pt"
        t0 = time.perf_counter()
        sd = zipformer_state(device="cpu", fill="rand")
        params = sum(v.numel() for v in sd.values())
        torch.save({"model": sd}, path)
        del sd
        size_mb = path.stat().st_size / 2**20
        print(f"wrote {path.name}: {params:,} parameters, {size_mb:.0f} MB in {time.perf_counter() - t0:.1f} s")
        times = []
        det = None
        for _ in range(args.repeats):
            t = time.perf_counter()
            det = detect(path)
            times.append(time.perf_counter() - t)
        import subprocess
        t = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "tui.cli.main", "detect", str(path), "--json"], cwd=ROOT,
                              capture_output=True, text=True)
        cli_s = time.perf_counter() - t
        print(f"detected: {det.arch.name}  {det.flags_text()}")
        print(f"'sherpa-ncnn-wizard detect --json' end to end (new process, includes importing torch): {cli_s:.2f} s "
              f"(exit {proc.returncode})")
        print(f"detect in process: first {times[0]:.3f} s, median {statistics.median(times):.3f} s, best {min(times):.3f} s "
              f"over {len(times)} runs (target < 3 s): {'OK' if max(times) < 3 else 'TOO SLOW'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
