"""sherpa-ncnn decoding of the validation wavs, always in a child process (a bad model segfaults it or makes it
call ``exit(-1)``): transcripts, tokens, timestamps and the child's own speed figures."""
from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from core.validation.agreement import TAIL_PADDING_SECONDS, edit_distance

NETS = ("encoder", "decoder", "joiner")
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


_DECODE_CHILD = r"""
import json, sys, time
import numpy as np
import sherpa_ncnn
cfg = json.loads(sys.argv[1])
t0 = time.perf_counter()
r = sherpa_ncnn.Recognizer(num_threads=cfg["threads"], **cfg["files"])
load = time.perf_counter() - t0
print("LOADED", flush=True)
audio = compute = cpu = 0.0  # cpu: this process's CPU time while decoding (below the wall time: a shared core)
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
    start, cpu0 = time.perf_counter(), time.process_time()
    for k in range(0, len(samples), step):
        r.accept_waveform(16000, samples[k:k + step])
        if first is None and r.text.strip():
            first = time.perf_counter() - start
    r.accept_waveform(16000, np.zeros(int(16000 * cfg["tail"]), dtype=np.float32))
    r.input_finished()
    if first is None and r.text.strip():
        first = time.perf_counter() - start
    compute += time.perf_counter() - start
    cpu += time.process_time() - cpu0
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
                             "decode_seconds": round(compute, 4), "cpu_seconds": round(cpu, 4),
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
    ref, hyp = reference.split(), hypothesis.split()
    if not ref:
        return 0.0 if not hyp else 1.0
    return edit_distance(ref, hyp) / len(ref)


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
