"""Benchmark: built-in calibration time against the bare ncnn forward passes over the same audio.

Not a test. Run from the repository root:

    .venv/bin/python benchmarks/bench_calibrate.py [ARCH] [--seconds 120]

Builds the demo model for ARCH (default lstm) through the real pipeline,
re-converts encoder and joiner with fp16=0, makes calibration audio by
repeating the demo wavs (about --seconds of speech-like signal in 10 files),
(--icefall-size: a model of the recipe's default size, random weights, as a user's model costs per chunk),
then times (a) the physical floor: reading the audio, features, and the very
streaming loop calibration uses (core.calibration_run.Streamer: encoder chunks
with states, greedy joiner frames) with no statistics hooks, light mode on,
one process; (b) calibrate() with one worker, everything included (statistics,
histograms, KL threshold search, weight scales); (c) calibrate() with one
worker per core. (a) and (b) are timed back to back --repeat times (the machine
may be shared); the best of each is compared. Target: (b) <= 1.3x (a).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from core.audio import fbank, read_wav  # noqa: E402
from core.calibration_run import ModelFiles, _ModelRunner, calibrate  # noqa: E402
from core.demo import demo_recipe  # noqa: E402
from core.tools import wheel_pnnx  # noqa: E402

TARGET = 1.3


def build_model(arch: str, tmp: Path, flags: list[str] | None = None) -> ModelFiles:
    """The demo recipe's model (its own small flags, or ``flags``: [] = the recipe's = icefall's defaults)."""
    run = tmp / "run"
    root = Path(__file__).resolve().parents[1]
    if flags is None:
        argv = ["--demo", arch]
    else:
        from core.demo import demo_config, demo_recipe
        sys.path.insert(0, str(root / "assets" / "demo"))
        from make_demo_assets import make_checkpoint
        tokens = tmp / "tokens.txt"
        shutil.copy(demo_recipe(arch).bpe_model.with_name("tokens.txt"), tokens)
        config = demo_config(arch)
        config.files.checkpoint = str(make_checkpoint(arch, flags, tokens, tmp / "pretrained.pt"))
        config.hyperparameters = {flags[i].lstrip("-"): flags[i + 1] for i in range(0, len(flags), 2)}
        config.validation.numeric = config.validation.decode = False
        config.save(tmp / "wizard.toml")
        argv = ["--config", str(tmp / "wizard.toml")]
    subprocess.run([sys.executable, "-m", "tui.cli", "run", *argv, "--out", str(run)], check=True,
                   capture_output=True, cwd=root)
    d = tmp / "fp32"
    d.mkdir()
    pnnx, _ = wheel_pnnx()
    for net in ("encoder", "joiner"):
        stem = d / net
        subprocess.run([str(pnnx), str(run / "work/exp" / f"{net}_jit_trace-pnnx.pt"), f"pnnxparam={stem}.pnnx.param",
                        f"pnnxbin={stem}.pnnx.bin", f"pnnxpy={stem}_pnnx.py", f"pnnxonnx={stem}.pnnx.onnx",
                        f"ncnnparam={stem}.raw.param", f"ncnnbin={d}/{net}_jit_trace-pnnx.ncnn.bin",
                        f"ncnnpy={stem}_ncnn.py", "fp16=0"], check=True, capture_output=True)
        shutil.copy(run / f"{net}_jit_trace-pnnx.ncnn.param", d / f"{net}_jit_trace-pnnx.ncnn.param")
    for ext in ("param", "bin"):
        shutil.copy(run / f"decoder_jit_trace-pnnx.ncnn.{ext}", d / f"decoder_jit_trace-pnnx.ncnn.{ext}")
    return ModelFiles(*(d / f"{n}_jit_trace-pnnx.ncnn.{e}" for n in ("encoder", "decoder", "joiner")
                        for e in ("param", "bin")))


def make_audio(arch: str, seconds: float, tmp: Path) -> list[Path]:
    pieces = [read_wav(w).samples for w in demo_recipe(arch).test_wavs]
    joined = np.concatenate(pieces)
    per_file = int(seconds * 16000 / 10)
    out = []
    for i in range(10):
        samples = np.resize(np.roll(joined, i * 1000), per_file)
        path = tmp / f"cal-{i}.wav"
        with wave.open(str(path), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
        out.append(path)
    return out


def forward_floor(files: ModelFiles, wavs: list[Path]) -> float:
    """Only what calibration cannot avoid: reading and features, then calibration's own streaming loop
    (core.calibration_run.Streamer: encoder chunks with states, greedy joiner frames) with no statistics
    hooks and ncnn's light mode on."""
    runner = _ModelRunner(files)
    t0 = time.perf_counter()
    for wav in wavs:
        w = read_wav(wav)
        runner.streamer.run(fbank(w.samples, w.sample_rate))
    return time.perf_counter() - t0


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("arch", nargs="?", default="lstm")
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--repeat", type=int, default=3, help="floor/calibration pairs to time (best of each is shown)")
    p.add_argument("--icefall-size", action="store_true",
                   help="a model of icefall's default size (the recipe's defaults, random weights) instead of the "
                        "demo's tiny one: what a user's model costs per chunk")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = build_model(a.arch, tmp, [] if a.icefall_size else None)
        wavs = make_audio(a.arch, a.seconds, tmp)
        floors, serials = [], []
        for _ in range(a.repeat):  # back to back, so both see the same machine load
            floors.append(forward_floor(files, wavs))
            t0 = time.perf_counter()
            one = calibrate(files, wavs, workers=1)
            serials.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        calibrate(files, wavs)
        parallel = time.perf_counter() - t0
    floor, serial = min(floors), min(serials)
    pair = sorted(s / f for s, f in zip(serials, floors))[len(floors) // 2]
    size = "icefall's default size" if a.icefall_size else "the demo's size"
    print(f"{a.arch} ({size}): {a.seconds:.0f} s of audio in 10 files, {one.chunks} encoder chunks, "
          f"{one.frames} joiner frames; best of {a.repeat}")
    print(f"  bare forward passes (floor)     {floor:7.2f} s   (calibration's streaming loop, no statistics)")
    print(f"  calibrate, 1 worker             {serial:7.2f} s  = {serial / floor:.2f}x the floor "
          f"(median of back-to-back pairs {pair:.2f}x)")
    print(f"  calibrate, 1 worker per core    {parallel:7.2f} s  = {parallel / floor:.2f}x the floor")
    verdict = "UNDER" if serial <= TARGET * floor else "OVER"
    print(f"  single-worker calibration is {verdict} the {TARGET}x target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
