"""Benchmark: built-in calibration time against the bare ncnn forward passes over the same audio.

Not a test. Run from the repository root:

    .venv/bin/python benchmarks/bench_calibrate.py [ARCH] [--seconds 120]

Builds the demo model for ARCH (default lstm) through the real pipeline,
re-converts encoder and joiner with fp16=0, makes calibration audio by
repeating the demo wavs (about --seconds of speech-like signal in 10 files),
(--icefall-size: a model of the recipe's default size, random weights, as a user's model costs per chunk),
then times (a) the physical floor: reading the audio, features, and the very
streaming loop calibration uses (core.int8.streamer.Streamer: encoder chunks
with states, greedy joiner frames) with no statistics hooks, light mode on,
one process; (b) calibrate() with one worker, everything included (statistics,
histograms, KL threshold search, weight scales); (c) calibrate() with one
worker per core. (a) and (b) are timed back to back --repeat times (the machine
may be shared); the best of each is compared. Target: (b) <= 1.3x (a).
Peak memory (RSS) of a calibration alone in a fresh process, and of its worker
processes, is printed too, for both histogram modes (upstream's
generate-int8-scale-table: 74-111 MB on the real fixtures with the same audio).

--model-dir OUT: calibrate the fp32 set a finished `run --int8` left in OUT
(e.g. the real icefall fixtures) instead of building the demo; --wav-dir D:
the wavs in D instead of the made-up audio.

--histograms: the one-pass histogram against ncnn's exact two-pass one
(core.int8.calibrate.ExactStats; `[calibration] histogram`): time and peak RSS
of each, the activation scales layer by layer, both tables quantized with the
built-in quantizer, and the int8 encoder/joiner outputs' cosine against fp32
on the calibration audio (core.int8.check).

--joiner-stats: the joiner table from ours (per frame, ids 0 and 2 emit nothing,
as the runtime) against upstream's statistics (its joiner extractor is made once
per chunk, so every frame of a chunk counts the first frame's blobs, and its
greedy search repeats the first frame's token; only id 0 is blank), each
quantized, and the int8 joiner's cosine against fp32.
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

from core.common.audio import fbank, read_wav  # noqa: E402
import core.int8.calibration as calibration_run  # noqa: E402
from core.int8.calibrate import DEFAULT_HISTOGRAM, HISTOGRAM_MODES, ScaleTable, activation_scale  # noqa: E402
from core.int8.calibration import ModelFiles, _ModelRunner, calibrate  # noqa: E402
from core.pipeline.demo import demo_recipe  # noqa: E402
from core.pnnx.tools import wheel_pnnx  # noqa: E402

TARGET = 1.3


def build_model(arch: str, tmp: Path, flags: list[str] | None = None) -> ModelFiles:
    """The demo recipe's model (its own small flags, or ``flags``: [] = the recipe's = icefall's defaults)."""
    run = tmp / "run"
    root = Path(__file__).resolve().parents[1]
    if flags is None:
        argv = ["--demo", arch]
    else:
        from core.pipeline.demo import demo_config, demo_recipe
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
    subprocess.run([sys.executable, "-m", "tui.cli.main", "run", *argv, "--out", str(run)], check=True,
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


def model_from_run(out: Path) -> ModelFiles:
    """The set a `run --int8` calibrated: its final params with the fp32 weights from work/fp32/set (`run
    --from-ncnn` without traced modules calibrates the given files themselves)."""
    s = out / "work" / "fp32" / "set"
    s = s if s.is_dir() else out
    return ModelFiles(out / "encoder_jit_trace-pnnx.ncnn.param", s / "encoder_jit_trace-pnnx.ncnn.bin",
                      out / "decoder_jit_trace-pnnx.ncnn.param", out / "decoder_jit_trace-pnnx.ncnn.bin",
                      out / "joiner_jit_trace-pnnx.ncnn.param", s / "joiner_jit_trace-pnnx.ncnn.bin")


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
    (core.int8.streamer.Streamer: encoder chunks with states, greedy joiner frames) with no statistics
    hooks and ncnn's light mode on."""
    runner = _ModelRunner(files)
    t0 = time.perf_counter()
    for wav in wavs:
        w = read_wav(wav)
        runner.streamer.run(fbank(w.samples, w.sample_rate))
    return time.perf_counter() - t0


_RSS_CHILD = """
import resource, sys
from pathlib import Path
sys.path.insert(0, sys.argv[1])
from core.int8.calibration import ModelFiles, calibrate
files = ModelFiles(*map(Path, sys.argv[2:8]))
workers = int(sys.argv[8]) or None
calibrate(files, [Path(w) for w in sys.argv[10:]], workers=workers, histogram=sys.argv[9])
hwm = [int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")]
print(hwm[0], resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


def peak_rss_mb(files: ModelFiles, wavs: list[Path], workers: int, histogram: str = DEFAULT_HISTOGRAM
                ) -> tuple[float, float]:
    """Peak resident memory of a calibration alone, run in a fresh process (as the wizard runs it, in a child):
    that process's and its largest worker's, in MB (workers=0: one worker per core). The process's own is its
    VmHWM: getrusage's ru_maxrss survives exec, so it would count this (benchmark) process's size at the fork."""
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", _RSS_CHILD, str(root), *map(str, vars(files).values()), str(workers),
                          histogram, *map(str, wavs)], check=True, capture_output=True, text=True).stdout.split()
    return int(out[-2]) / 1024, int(out[-1]) / 1024


def compare_histograms(files: ModelFiles, wavs: list[Path], tmp: Path) -> None:
    """Both histogram modes: time, peak RSS (each in a fresh process), activation scales layer by layer, and the
    int8 encoder/joiner outputs' cosine against fp32 (each table quantized with the built-in quantizer)."""
    from core.int8.check import compare_int8_here
    from core.int8.quantize import quantize
    results, tables, cost = {}, {}, {}
    for mode in HISTOGRAM_MODES:
        t0 = time.perf_counter()
        r = calibrate(files, wavs, workers=1, histogram=mode)
        cost[mode] = (time.perf_counter() - t0, peak_rss_mb(files, wavs, 1, mode)[0])
        tables[mode] = r
        pairs = {}
        for net, table, (param, binary) in (("encoder", r.encoder, (files.encoder_param, files.encoder_bin)),
                                            ("joiner", r.joiner, (files.joiner_param, files.joiner_bin))):
            out = tmp / f"{mode}-{net}"
            quantize(param, binary, table, out.with_suffix(".param"), out.with_suffix(".bin"))
            pairs[net] = (out.with_suffix(".param"), out.with_suffix(".bin"))
        results[mode] = compare_int8_here(files, pairs["encoder"], pairs["joiner"], wavs)
    one, two = tables["one-pass"], tables["two-pass"]
    print(f"histograms ({len(wavs)} files, {one.chunks} encoder chunks, {one.frames} joiner frames):")
    moved = []
    for net in ("encoder", "joiner"):
        a_t, b_t = getattr(one, net).activations, getattr(two, net).activations
        for layer in a_t:
            d = b_t[layer].scale / a_t[layer].scale - 1
            moved.append(abs(d))
            print(f"  {net:7} {layer:24} one-pass {a_t[layer].scale:10.4f}  two-pass {b_t[layer].scale:10.4f}  {d:+.2%}")
    print(f"  activation scales: two-pass vs one-pass differ by {max(moved):.2%} at most, "
          f"{sum(moved) / len(moved):.2%} on average")
    for mode, sims in results.items():
        cells = ", ".join(f"{s.net} {s.output} mean {s.mean_cosine:.5f} worst {s.min_cosine:.5f}" for s in sims)
        print(f"  {mode:9} {cost[mode][0]:5.2f} s, peak RSS {cost[mode][1]:4.0f} MB; int8 vs fp32 cosine: {cells}")


def upstream_joiner_table(files: ModelFiles, wavs: list[Path], weights: dict) -> ScaleTable:
    """The joiner table as generate-int8-scale-table's statistics make it (see --joiner-stats)."""
    from core.int8.calibrate import BlobStats
    runner = _ModelRunner(files)
    blobs = [b for b in runner.join_order if b not in ("in0", "in1")]
    stats = {b: BlobStats() for b in set(runner.join_bottoms.values())}
    streamer = runner.streamer
    for wav in wavs:
        w = read_wav(wav)
        state = {"context": [0] * calibration_run.CONTEXT_SIZE}
        state["dec"] = calibration_run._run_decoder(streamer.decoder, state["context"])

        def on_chunk(chunk, states, encoder_out, mats):
            first = np.ascontiguousarray(encoder_out[0], dtype=np.float32)
            dec = state["dec"]
            ex = streamer.joiner.create_extractor()
            ex.input("in0", calibration_run.as_mat(first))
            ex.input("in1", calibration_run.as_mat(dec))
            taken = [np.array(ex.extract(b)[1]) for b in blobs]
            token = int(np.argmax(np.asarray(ex.extract("out0")[1])))
            for _ in range(len(encoder_out)):  # the cached extractor hands back frame 0's blobs and logits
                for b, value in (("in0", first), ("in1", dec), *zip(blobs, taken)):
                    if b in stats:
                        stats[b].add(value)
                if token != 0:
                    state["context"] = state["context"][1:] + [token]
                    state["dec"] = calibration_run._run_decoder(streamer.decoder, state["context"])

        streamer.run(fbank(w.samples, w.sample_rate), on_chunk=on_chunk)
    table = ScaleTable(weights=dict(weights))
    for layer, blob in runner.join_bottoms.items():
        table.activations[layer] = activation_scale(layer, stats[blob])
    return table


def compare_joiner_stats(files: ModelFiles, wavs: list[Path], tmp: Path) -> None:
    from core.int8.check import compare_int8_here
    from core.int8.quantize import quantize
    ours = calibrate(files, wavs, workers=1)
    upstream = upstream_joiner_table(files, wavs, ours.joiner.weights)
    enc = (tmp / "enc.param", tmp / "enc.bin")
    quantize(files.encoder_param, files.encoder_bin, ours.encoder, *enc)
    print(f"joiner statistics ({len(wavs)} files):")
    for name, table in (("ours (per frame, blank 0 and 2, whole range)", ours.joiner),
                        ("upstream (first frame per chunk, blank 0)", upstream)):
        join = (tmp / "join.param", tmp / "join.bin")
        quantize(files.joiner_param, files.joiner_bin, table, *join)
        sims = [s for s in compare_int8_here(files, enc, join, wavs) if s.net == "joiner"]
        scales = " ".join(f"{a.layer}={a.scale:.4g}" for a in table.activations.values())
        print(f"  {name:42} joiner cosine mean {sims[0].mean_cosine:.5f} worst {sims[0].min_cosine:.5f}; {scales}")


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("arch", nargs="?", default="lstm")
    p.add_argument("--seconds", type=float, default=120.0)
    p.add_argument("--repeat", type=int, default=3, help="floor/calibration pairs to time (best of each is shown)")
    p.add_argument("--icefall-size", action="store_true",
                   help="a model of icefall's default size (the recipe's defaults, random weights) instead of the "
                        "demo's tiny one: what a user's model costs per chunk")
    p.add_argument("--model-dir", type=Path, metavar="OUT",
                   help="a finished `run --int8` output directory (its work/fp32/set) instead of building the demo")
    p.add_argument("--wav-dir", type=Path, metavar="D", help="calibration wavs (*.wav) instead of the made-up audio")
    p.add_argument("--histograms", action="store_true",
                   help="compare the one-pass and the two-pass (ncnn's) histograms: scales and int8 cosine")
    p.add_argument("--joiner-stats", action="store_true",
                   help="compare our joiner statistics with upstream's (first frame per chunk): int8 joiner cosine")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = model_from_run(a.model_dir) if a.model_dir else build_model(a.arch, tmp, [] if a.icefall_size else None)
        wavs = sorted(a.wav_dir.glob("*.wav")) if a.wav_dir else make_audio(a.arch, a.seconds, tmp)
        if a.histograms:
            compare_histograms(files, wavs, tmp)
            return 0
        if a.joiner_stats:
            compare_joiner_stats(files, wavs, tmp)
            return 0
        floors, serials = [], []
        for _ in range(a.repeat):  # back to back, so both see the same machine load
            floors.append(forward_floor(files, wavs))
            t0 = time.perf_counter()
            one = calibrate(files, wavs, workers=1)
            serials.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        calibrate(files, wavs)
        parallel = time.perf_counter() - t0
        rss = [peak_rss_mb(files, wavs, 1), peak_rss_mb(files, wavs, 0)]
        rss_modes = {m: peak_rss_mb(files, wavs, 1, m)[0] for m in HISTOGRAM_MODES}
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
    pool = f"+ {rss[1][1]:.0f} MB per worker" if rss[1][1] else "(no worker started: too little audio to pay off)"
    print(f"  peak RSS, calibration alone in a fresh process: 1 worker {rss[0][0]:.0f} MB; 1 worker per core "
          f"{rss[1][0]:.0f} MB {pool} (upstream's tool: 74-111 MB on the real fixtures, as shipped)")
    print("  peak RSS by histogram mode, 1 worker: " + ", ".join(f"{m} {v:.0f} MB" for m, v in rss_modes.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
