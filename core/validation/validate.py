"""Validate a produced model: torch vs ncnn numerically, and decoding in the real sherpa-ncnn.

Runs as its own process (``python -m core.validation.validate OUT ...``) because it
imports torch and ncnn; sherpa-ncnn itself runs in a further child process,
since a bad model segfaults it or makes it call ``exit(-1)``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.validation.numeric import NumericResult

NETS = ("encoder", "decoder", "joiner")
TAIL_PADDING_SECONDS = 0.5
DECODE_TIMEOUT_SECONDS = 300


@dataclass
class DecodeResult:
    ok: bool
    model: str  # "fp16" or "int8"
    results: list[dict] = field(default_factory=list)  # wav, text, seconds, wer
    error: str | None = None
    returncode: int | None = None
    log_tail: list[str] = field(default_factory=list)
    # the decoding child's own figures (load_seconds, rtf, first_result_seconds, peak_mb, audio_seconds, threads):
    # the speed table's 1-thread row, so the speed step does not decode the same wavs again
    speed: dict | None = None


# -- numeric -----------------------------------------------------------------

def compare_net(net: str, pt: Path, param: Path, binary: Path, arch: str, features=None, seed: int = 0,
                threads: int = 1, shape_files: list[Path] | None = None, metadata_specs=None,
                frames: int | None = None, traced=None) -> list[NumericResult]:
    """Feed torch and ncnn the same inputs (two chunks for encoders, states carried) and compare every output.

    The torch half (``torch_reference``) and the ncnn half (core.validation.numeric.compare_chunks) in this
    process; the validation process runs the ncnn half in a child instead (no second copy of the weights beside
    torch's, and a crash in ncnn fails only that child)."""
    from core.validation.numeric import compare_chunks
    chunks = torch_reference(net, pt, features, seed, shape_files, metadata_specs, frames, traced)
    return compare_chunks(net, param, binary, chunks, threads)


def torch_reference(net: str, pt: Path, features=None, seed: int = 0, shape_files: list[Path] | None = None,
                    metadata_specs=None, frames: int | None = None, traced=None) -> list[tuple[list, list]]:
    """torch's side of the numeric check: per chunk, the pnnx-numbered inputs and torch's outputs (numpy).

    The traced module is called the way it was traced (core.model.traced: lists, tuples, constants), with pnnx's
    flat numbering in0..inK. ``frames``: the encoder chunk sherpa-ncnn feeds (from the metadata), when it differs
    from the traced one (icefall traces its LSTM on 100 frames, sherpa-ncnn feeds 9). ``traced``: the module,
    when already loaded (core.validation.agreement.transducer)."""
    import numpy as np
    import torch

    if traced is None:
        from core.model.traced import load
        traced = load(pt, shape_files, metadata_specs)
    traced._need_specs()
    rng = np.random.default_rng(seed)
    lengths = traced.lengths_index() if net == "encoder" else None
    chunk = (frames or traced.specs[0].shape[1]) if net == "encoder" else None
    inputs = []
    for i, spec in enumerate(traced.specs):
        shape, dtype = list(spec.shape), spec.dtype
        if net == "decoder":
            shape = [1] + shape[1:]
        if net == "encoder" and i == 0:
            shape[1] = chunk
            x = np.zeros(shape[1:], dtype=np.float32)
            if features is not None:
                take = features[:chunk]
                x[: len(take)] = take
            else:
                x = rng.standard_normal(shape[1:]).astype(np.float32)
            inputs.append(torch.from_numpy(x).unsqueeze(0))
        elif i == lengths:  # the number of feature frames fed
            inputs.append(torch.full(shape, chunk, dtype=getattr(torch, dtype)))
        elif net == "encoder":  # states start from zero, as in icefall and sherpa-ncnn
            inputs.append(torch.zeros(shape, dtype=getattr(torch, dtype)))
        elif dtype.startswith("int"):
            inputs.append(torch.tensor(rng.integers(1, 8, size=shape), dtype=getattr(torch, dtype)))
        else:
            inputs.append(torch.from_numpy(rng.standard_normal(shape).astype(np.float32)))
    result = []
    for _ in range(2 if net == "encoder" else 1):
        outs = traced(inputs)
        result.append(([t.numpy().copy() for t in inputs], [t.detach().numpy() for t in outs]))
        if net == "encoder":  # carry torch's new states into the next chunk
            for k in traced.state_indices():
                if k < len(outs) and outs[k].shape == inputs[k].shape:
                    inputs[k] = outs[k].detach()
            x = np.zeros((chunk, inputs[0].shape[2]), dtype=np.float32)
            if features is not None:
                take = features[chunk: 2 * chunk]  # the next frames; chunk overlap does not matter for a comparison
                x[: len(take)] = take
            else:
                x = rng.standard_normal(x.shape).astype(np.float32)
            inputs[0] = torch.from_numpy(x).unsqueeze(0)
    return result


# -- decoding in sherpa-ncnn ---------------------------------------------------

_DECODE_CHILD = r"""
import json, sys, time
import numpy as np
import sherpa_ncnn
cfg = json.loads(sys.argv[1])
t0 = time.perf_counter()
r = sherpa_ncnn.Recognizer(num_threads=cfg["threads"], **cfg["files"])
load = time.perf_counter() - t0
print("LOADED", flush=True)
audio = compute = 0.0
first = None
for i, item in enumerate(cfg["inputs"]):
    if i:  # a fresh stream per file (zero states, like a fresh recognizer), the model loaded once
        if hasattr(r, "recognizer"):
            r.stream = r.recognizer.create_stream()
        else:  # a sherpa_ncnn without that attribute: a fresh recognizer (its load is not counted)
            del r
            r = sherpa_ncnn.Recognizer(num_threads=cfg["threads"], **cfg["files"])
    samples = np.load(item["npy"]) if item.get("npy") else np.zeros(16000, dtype=np.float32)
    step = int(16000 * cfg["chunk"])  # fed as an app streams it: the first result's latency is measured too
    start = time.perf_counter()
    for k in range(0, len(samples), step):
        r.accept_waveform(16000, samples[k:k + step])
        if first is None and r.text.strip():
            first = time.perf_counter() - start
    r.accept_waveform(16000, np.zeros(int(16000 * cfg["tail"]), dtype=np.float32))
    r.input_finished()
    if first is None and r.text.strip():
        first = time.perf_counter() - start
    compute += time.perf_counter() - start
    audio += len(samples) / 16000.0
    print("RESULT " + json.dumps({"wav": item["wav"], "text": r.text, "tokens": [int(t) for t in r.tokens],
                                  "timestamps": [float(t) for t in r.timestamps]}), flush=True)
hwm = None
try:  # this child's own peak resident memory (Linux); elsewhere the parent takes wait4's figure
    with open("/proc/self/status") as fh:
        hwm = next((round(int(l.split()[1]) / 1024.0, 1) for l in fh if l.startswith("VmHWM:")), None)
except OSError:
    pass
print("SPEED " + json.dumps({"threads": cfg["threads"], "load_seconds": round(load, 4), "peak_mb": hwm,
                             "rtf": round(compute / audio, 4) if audio else None, "audio_seconds": round(audio, 3),
                             "decode_seconds": round(compute, 4),
                             "first_result_seconds": None if first is None else round(first, 4)}), flush=True)
"""
CHUNK_SECONDS = 0.1  # assets/bench_template.py's CHUNK_SECONDS: the 1-thread figures here are the speed table's


def model_files(out: Path, int8: bool = False) -> dict[str, str]:
    def pick(net: str, ext: str) -> str:
        if int8 and net in ("encoder", "joiner"):
            return str(out / f"{net}_jit_trace-pnnx.ncnn.int8.{ext}")
        return str(out / f"{net}_jit_trace-pnnx.ncnn.{ext}")
    files = {f"{net}_{ext}": pick(net, ext) for net in NETS for ext in ("param", "bin")}
    files["tokens"] = str(out / "tokens.txt")
    return files


_PENDING: dict[tuple, object] = {}  # (what, out, ...) -> a Future started by start_children
_POOL: dict[str, object] = {}  # "pool": the executor start_children made, for children started later


def start_children(out: Path, wavs: list[Path], references: dict[str, str], int8: bool, fp32_dir: Path | None,
                   run_decode: bool = True) -> object:
    """Start the work that runs in child processes (sherpa-ncnn decodes, the int8 cosine) now, so it overlaps the
    torch work in this process: one child at a time per core left after torch's one (at least one)."""
    import os
    from concurrent.futures import ThreadPoolExecutor
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    pool = ThreadPoolExecutor(max_workers=max(1, cores - 1), thread_name_prefix="validate-child")
    _POOL["pool"] = pool
    # the longest first (the int8 cosine runs the fp32 and the int8 nets over every wav), so that the decodes left
    # at the end can be shared out between the pool and this thread (run_queued_here)
    if int8 and wavs and fp32_dir is not None:
        _PENDING[("int8-cosine", str(out))] = _submit(pool, _int8_similarity, out, fp32_dir, wavs)
    if run_decode:
        _PENDING[("decode", str(out), False)] = _submit(pool, decode, out, wavs, references)
    if int8:
        _PENDING[("decode", str(out), True)] = _submit(pool, decode, out, wavs, references, True)
    return pool


_WORK: dict[object, tuple] = {}  # a submitted Future -> (fn, args), so this thread can run it when still queued


def _submit(pool, fn, *args):
    future = pool.submit(_timed, fn, *args)
    _WORK[future] = (fn, args)
    return future


def run_queued_here() -> None:
    """Run every child the pool has not started yet in this thread, oldest first (the torch work is done: its core
    is free), while the pool's workers finish theirs; their results are then waiting for the collectors."""
    from concurrent.futures import Future
    for future in list(_WORK):
        fn, args = _WORK.pop(future)
        if future.cancel():
            done: Future = Future()
            done.set_result(_timed(fn, *args))
            for key, value in list(_PENDING.items()):
                if value is future:
                    _PENDING[key] = done
            _STOLEN[future] = done


_STOLEN: dict[object, object] = {}  # a cancelled (run here instead) Future -> the Future holding its result


def _start_numeric(out: Path, torch_side: dict) -> tuple:
    """torch's inputs and outputs to a file, and the ncnn half of the numeric check started on them in a child
    (in the pool when there is one: it then overlaps torch's streaming decode)."""
    import os
    import tempfile

    from core.validation.numeric import compare_in_child, save_chunks
    fd, name = tempfile.mkstemp(prefix=".numeric-", suffix=".npz", dir=out)
    os.close(fd)
    save_chunks(Path(name), torch_side)
    pool = _POOL.get("pool")
    if pool is not None:
        return Path(name), _submit(pool, compare_in_child, out, Path(name))
    return Path(name), None


def _finish_numeric(pending: tuple, timings: dict) -> dict:
    from core.validation.numeric import compare_in_child
    npz, future = pending
    try:
        result, exc, seconds = _result(future, compare_in_child, npz.parent, npz)
    finally:
        npz.unlink(missing_ok=True)
    timings["numeric (ncnn child)"] = round(seconds, 3)
    if exc is not None:
        return {net: f"the ncnn side could not run: {exc}" for net in NETS}
    return result


def _timed(fn, *args):
    import time
    t0 = time.perf_counter()
    try:
        return fn(*args), None, time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread, where it was always raised
        return None, exc, time.perf_counter() - t0


def _result(future, fn, *args):
    """(result, exception, seconds) of a started child's future; when the pool has not started it yet (its workers
    are busy), this thread runs it instead of waiting: the torch work is done, so its core is free."""
    future = _STOLEN.pop(future, future)
    _WORK.pop(future, None)
    if future is not None and not future.cancel():
        return future.result()
    return _timed(fn, *args)


def _collect(key: tuple, fn, *args, timings: dict | None = None, name: str = ""):
    """The prefetched result for ``key`` (waiting for it), else ``fn(*args)`` here; the seconds go to ``timings``."""
    future = _PENDING.pop(key, None)
    result, exc, seconds = _result(future, fn, *args)
    if timings is not None and name:
        timings[name] = round(seconds, 3)
    if exc is not None:
        raise exc
    return result


def _int8_similarity(out: Path, fp32_dir: Path, wavs: list[Path]):
    from core.int8.calibration import ModelFiles
    from core.int8.check import compare_int8
    fp32 = ModelFiles(out / "encoder_jit_trace-pnnx.ncnn.param", fp32_dir / "encoder_jit_trace-pnnx.ncnn.bin",
                      out / "decoder_jit_trace-pnnx.ncnn.param", out / "decoder_jit_trace-pnnx.ncnn.bin",
                      out / "joiner_jit_trace-pnnx.ncnn.param", fp32_dir / "joiner_jit_trace-pnnx.ncnn.bin")
    return compare_int8(fp32, (out / "encoder_jit_trace-pnnx.ncnn.int8.param",
                               out / "encoder_jit_trace-pnnx.ncnn.int8.bin"),
                        (out / "joiner_jit_trace-pnnx.ncnn.int8.param", out / "joiner_jit_trace-pnnx.ncnn.int8.bin"),
                        wavs)


def decode(out: Path, wavs: list[Path], references: dict[str, str], int8: bool = False,
           workdir: Path | None = None) -> DecodeResult:
    import numpy as np

    from core.common.audio import SAMPLE_RATE, AudioError, read_wav

    workdir = workdir or out
    inputs = []
    for i, wav in enumerate(wavs):
        try:
            w = read_wav(wav)
        except AudioError as exc:
            return DecodeResult(False, "int8" if int8 else "fp16", error=str(exc))
        if w.sample_rate != SAMPLE_RATE:
            return DecodeResult(False, "int8" if int8 else "fp16",
                                error=f"{wav}: {w.sample_rate} Hz; sherpa-ncnn models expect 16000 Hz mono")
        npy = workdir / f".decode-input-{'int8' if int8 else 'fp16'}-{i}.npy"
        np.save(npy, w.samples)
        inputs.append({"wav": str(wav), "npy": str(npy)})
    if not inputs:
        inputs = [{"wav": "(1 s of silence: no test wavs given)", "npy": None}]
    cfg = {"files": model_files(out, int8), "inputs": inputs, "tail": TAIL_PADDING_SECONDS, "threads": 1,
           "chunk": CHUNK_SECONDS}
    try:
        proc = subprocess.run([sys.executable, "-c", _DECODE_CHILD, json.dumps(cfg)], capture_output=True,
                              text=True, errors="replace", timeout=DECODE_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        return DecodeResult(False, "int8" if int8 else "fp16",
                            error=f"sherpa-ncnn did not finish in {DECODE_TIMEOUT_SECONDS} s (an endless decode loop "
                                  "usually means a chunk-length metadata key is 0)")
    finally:
        for item in inputs:
            if item["npy"]:
                Path(item["npy"]).unlink(missing_ok=True)
    lines = (proc.stdout + proc.stderr).splitlines()
    results = []
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            item = json.loads(line[7:])
            ref = references.get(item["wav"]) or references.get(Path(item["wav"]).name)
            if ref is not None:
                item["reference"] = ref
                item["wer"] = word_error_rate(ref, item["text"])
            results.append(item)
    model = "int8" if int8 else "fp16"
    if proc.returncode != 0:
        return DecodeResult(False, model, results, explain_exit(proc.returncode, lines, "LOADED" in proc.stdout),
                            proc.returncode, lines[-20:])
    speed = next((json.loads(line[6:]) for line in proc.stdout.splitlines() if line.startswith("SPEED ")), None)
    if speed is not None:
        speed = {"model": model, **speed, "texts": [item["text"] for item in results],
                 "wavs": [item["wav"] for item in results]}
    return DecodeResult(True, model, results, None, 0, lines[-20:], speed)


def explain_exit(rc: int, lines: list[str], loaded: bool) -> str:
    from core.common.hints import hint_for
    when = "while decoding" if loaded else "while loading the model"
    if rc == -11:
        what = f"sherpa-ncnn crashed with a segmentation fault {when}"
    elif rc == 255:
        what = f"sherpa-ncnn called exit(-1) {when}"
    elif rc < 0:
        what = f"sherpa-ncnn was killed by signal {-rc} {when}"
    else:
        what = f"the sherpa-ncnn child exited with code {rc} {when}"
    hint = hint_for(lines)
    return f"{what}: {hint}" if hint else what


def word_error_rate(reference: str, hypothesis: str) -> float:
    from core.validation.agreement import edit_distance  # the token agreement's Levenshtein, over words here
    ref, hyp = reference.split(), hypothesis.split()
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)


# -- entry point ----------------------------------------------------------------

def detect_arch(out: Path) -> str | None:
    from core.model.architectures import BY_MODEL_TYPE
    from core.model.metadata import read_metadata
    from core.ncnn.param import load_param
    parsed = load_param(out / "encoder_jit_trace-pnnx.ncnn.param")
    meta = read_metadata(parsed.model) if parsed.model else None
    spec = BY_MODEL_TYPE.get(meta.get(0)) if meta else None
    return spec.name if spec else None


def validate_int8(out: Path, fp32_dir: Path, wavs: list[Path], references: dict[str, str], report: dict,
                  print_fn=print, target: float = 0.99, traced_dir: Path | None = None, arch: str | None = None,
                  extra_dirs: tuple[Path, ...] = ()) -> None:
    """The int8 set: decoded by sherpa-ncnn, its token agreement with torch (when the traced modules are
    there; reported, not failed), and compared with fp32 on the same inputs (cosine per output)."""
    import time
    timings = report.setdefault("timings", {})
    report_decode(_collect(("decode", str(out), True), decode, out, wavs, references, True, timings=timings,
                           name="sherpa-ncnn int8 decode"), report, print_fn,
                  describe=lambda item: f"{item['text']!r}", key="decode_int8")
    if traced_dir is not None:
        t0 = time.perf_counter()
        check_agreement(out, arch, traced_dir, report["decode_int8"], report, print_fn, extra_dirs)
        timings["agreement int8 (compare)"] = round(time.perf_counter() - t0, 3)
    if not wavs:
        report["notes"].append("int8 similarity not measured: no wavs")
        return
    sims = _collect(("int8-cosine", str(out)), _int8_similarity, out, fp32_dir, wavs, timings=timings,
                    name="int8 cosine (child)")
    report["int8_similarity"] = [asdict(s) for s in sims]
    for s in sims:
        print_fn(s.line(target))
        if s.mean_cosine < target:
            report["notes"].append(f"int8 {s.net} {s.output}: mean cosine {s.mean_cosine:.4f} is below {target}; "
                                   "try more calibration audio, or keep the most sensitive layers in float")


def _torch_setup(out: Path, arch: str | None, traced_dir: Path, net: str) -> dict:
    """Where the shapes of a traced module's inputs can be found, and the chunk sherpa-ncnn feeds."""
    from core.model.traced import shape_files_near, specs_from_metadata
    from core.validation.agreement import AgreementError, _metadata, stream_geometry
    pt = traced_dir / f"{net}_jit_trace-pnnx.pt"
    kw: dict = {"shape_files": shape_files_near(pt, out / "work" / "pnnx")}
    if net == "encoder":
        try:
            meta, name = _metadata(out, arch)
            kw["metadata_specs"] = specs_from_metadata(name, meta)
            kw["frames"] = stream_geometry(name, meta)[0]
        except (AgreementError, KeyError, TypeError, ValueError, OSError):
            pass  # no usable metadata: the traced shapes are used
    return kw


def validate(out: Path, arch: str | None, traced_dir: Path | None, wavs: list[Path], references: dict[str, str],
             numeric: bool = True, run_decode: bool = True, print_fn=print) -> dict:
    import time
    report: dict = {"numeric": [], "decode": None, "ok": True, "notes": [], "timings": {}}
    timings = report["timings"]
    arch = arch or detect_arch(out)
    errors: dict[str, str] = {}
    pending_numeric = None
    shared = None  # the agreement check's traced modules, loaded once and used by the numeric check too
    if traced_dir is not None and (traced_dir / "encoder_jit_trace-pnnx.pt").exists() and (numeric or run_decode):
        t0 = time.perf_counter()
        import torch
        torch.set_num_threads(1)  # sherpa-ncnn's children run meanwhile on the other cores
        from core.validation.agreement import AgreementError, transducer
        from core.model.traced import TracedError
        try:
            shared = transducer(out, arch, traced_dir)
        except (AgreementError, TracedError, OSError):
            shared = None  # the numeric check loads its own; the agreement check reports the problem
        timings["torch import + load"] = round(time.perf_counter() - t0, 3)
    if numeric:
        t0 = time.perf_counter()
        if traced_dir is None or not (traced_dir / "encoder_jit_trace-pnnx.pt").exists():
            report["notes"].append("numeric check skipped: no traced *_jit_trace-pnnx.pt files")
            print_fn("numeric check skipped: no traced *_jit_trace-pnnx.pt files")
        else:
            features = None
            if wavs:
                from core.validation.agreement import features_for
                try:  # the agreement check's features of this wav (tail padding only adds frames at the end)
                    features = features_for(str(wavs[0]), TAIL_PADDING_SECONDS)
                except Exception as exc:  # noqa: BLE001 - reported, then random features are used
                    report["notes"].append(f"features from {wavs[0]} unavailable ({exc}); random inputs used")
            torch_side, errors = {}, {}
            for net in NETS:
                try:
                    torch_side[net] = torch_reference(net, traced_dir / f"{net}_jit_trace-pnnx.pt", features,
                                                      **_torch_setup(out, arch, traced_dir, net),
                                                      traced=getattr(shared, net, None))
                except Exception as exc:  # noqa: BLE001 - any failure here is a validation failure to report
                    errors[net] = str(exc)
            pending_numeric = _start_numeric(out, torch_side) if torch_side else None
        timings["numeric (torch)"] = round(time.perf_counter() - t0, 3)
    if run_decode:
        from core.validation.agreement import NO_WAV, prepare
        t0 = time.perf_counter()
        prepare(out, arch, traced_dir, [str(w) for w in wavs] or [NO_WAV], TAIL_PADDING_SECONDS)
        timings["torch streaming decode"] = round(time.perf_counter() - t0, 3)
    run_queued_here()  # torch is done: its core takes the children still queued
    if numeric and traced_dir is not None and (traced_dir / "encoder_jit_trace-pnnx.pt").exists():
        ncnn_side = _finish_numeric(pending_numeric, timings) if pending_numeric else {}
        for net in NETS:
            got = errors.get(net) or ncnn_side.get(net) or "the ncnn child gave no result"
            if isinstance(got, str):
                report["ok"] = False
                report["numeric"].append({"net": net, "error": got, "ok": False})
                print_fn(f"-[✗] {net}: numeric check failed: {got}")
                continue
            for r in got:
                print_fn(NumericResult(**r).line())
                report["numeric"].append(r)
                report["ok"] &= r["ok"]
    if run_decode:
        report_decode(_collect(("decode", str(out), False), decode, out, wavs, references, timings=timings,
                               name="sherpa-ncnn fp16 decode"), report, print_fn)
        t0 = time.perf_counter()
        check_agreement(out, arch, traced_dir, report["decode"], report, print_fn)
        timings["agreement fp16 (compare)"] = round(time.perf_counter() - t0, 3)
    return report


def check_agreement(out: Path, arch: str | None, traced_dir: Path | None, decoded: dict | None, report: dict,
                    print_fn=print, extra_dirs: tuple[Path, ...] = ()) -> None:
    """torch vs sherpa-ncnn token agreement on the decoded wavs (core.validation.agreement); never raises."""
    from core.validation.agreement import check
    try:
        check(out, arch, traced_dir, decoded, report, TAIL_PADDING_SECONDS, print_fn, extra_dirs)
    except Exception as exc:  # noqa: BLE001 - an unexpected failure is a failed check, said in one line
        report["ok"] = False
        report.setdefault("agreement", []).append({"model": (decoded or {}).get("model"), "error": str(exc),
                                                   "match": False})
        print_fn(f"-[✗] agreement: {type(exc).__name__}: {exc}")


def report_decode(d: DecodeResult, report: dict, print_fn=print,
                  describe=lambda item: f"{item['text']!r}" + (f"  (WER {item['wer']:.1%})" if "wer" in item else ""),
                  key: str = "decode") -> None:
    """Record a decode result in ``report[key]`` and print a line per file (or the failure and its log)."""
    report[key] = asdict(d)
    if d.ok:
        for item in d.results:
            print_fn(f"-[✓] sherpa-ncnn {d.model} {Path(item['wav']).name}: {describe(item)}")
    else:
        report["ok"] = False
        print_fn(f"-[✗] sherpa-ncnn {d.model}: {d.error}")
        for line in d.log_tail[-8:]:
            print_fn(f"    {line}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m core.validation.validate", description=__doc__)
    p.add_argument("out", type=Path, help="the model directory")
    p.add_argument("--arch", default=None)
    p.add_argument("--traced-dir", type=Path, default=None, help="where the *_jit_trace-pnnx.pt files are")
    p.add_argument("--wav", action="append", type=Path, default=[])
    p.add_argument("--reference", action="append", default=[], help="WAV=TEXT")
    p.add_argument("--json-out", type=Path, default=None)
    p.add_argument("--no-numeric", action="store_true")
    p.add_argument("--no-decode", action="store_true")
    p.add_argument("--int8", action="store_true", help="also check the *.int8.* encoder and joiner")
    p.add_argument("--fp32-dir", type=Path, default=None, help="where the fp32 encoder/joiner .bin files are")
    a = p.parse_args(argv)
    refs = dict(r.split("=", 1) for r in a.reference if "=" in r)
    say = lambda s: print(s, flush=True)  # noqa: E731
    # the log pane's first line at once: loading torch and the traced modules takes seconds before any result
    say(f"validating {a.out}: sherpa-ncnn decodes start in child processes; loading torch and the traced modules ...")
    pool = start_children(a.out, a.wav, refs, a.int8, a.fp32_dir or a.out / "work" / "fp32", not a.no_decode)
    report = validate(a.out, a.arch, a.traced_dir, a.wav, refs, not a.no_numeric, not a.no_decode, print_fn=say)
    if a.int8:
        validate_int8(a.out, a.fp32_dir or a.out / "work" / "fp32", a.wav, refs, report, print_fn=say,
                      traced_dir=a.traced_dir, arch=a.arch)
    pool.shutdown()
    return finish_report(report, a.json_out)


def finish_report(report: dict, json_out: Path | None) -> int:
    """The end of a validation process: the report as JSON (when asked), the verdict line, the exit code."""
    if json_out:
        from core.common.atomic import atomic_write_bytes
        atomic_write_bytes(json_out, json.dumps(report, indent=2).encode())
    print("validation passed" if report["ok"] else "validation FAILED", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
