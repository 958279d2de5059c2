#!/usr/bin/env python3
"""How fast this sherpa-ncnn model runs on this device: real-time factor, first-result latency, load time, peak memory.

Written by sherpa-ncnn-wizard next to the model files; it needs only ``sherpa_ncnn`` and ``numpy`` (pip wheels exist
for x86_64, aarch64 and armv7 boards). Run it from the model directory:

    python bench.py                       # fp16 (and int8 when present), 1 thread and all cores, test_wavs/*.wav
    python bench.py --wav a.wav --threads 1 2 4 --json

Each (model, threads) pair runs in its own child process, so a model that crashes sherpa-ncnn ends that child only,
and its peak resident memory is the model's alone. The wizard's ``speed`` step and its
``bench`` command run this same code.

  rtf                   decoding seconds / audio seconds (below 1 is faster than real time), load excluded
  first_result_seconds  wall seconds from the first audio fed (as fast as possible, 0.1 s chunks) to the first text
  load_seconds          seconds to construct the recognizer (read and set up the three nets)
  peak_mb               the child's peak resident memory (Python, numpy and sherpa-ncnn included): its own VmHWM on
                        Linux, else the ru_maxrss os.wait4 reports for it
"""
import argparse
import json
import os
import subprocess
import sys
import time
import wave

NETS = ("encoder", "decoder", "joiner")
CHUNK_SECONDS = 0.1
TAIL_SECONDS = 0.5  # silence after each file, so the last words leave the encoder's right context
HERE = os.path.dirname(os.path.abspath(__file__))


def model_files(model_dir, model):
    """sherpa_ncnn.Recognizer's file arguments for the fp16 set or the int8 one (decoder stays fp16)."""
    files = {}
    for net in NETS:
        for ext in ("param", "bin"):
            int8 = os.path.join(model_dir, "%s_jit_trace-pnnx.ncnn.int8.%s" % (net, ext))
            plain = os.path.join(model_dir, "%s_jit_trace-pnnx.ncnn.%s" % (net, ext))
            files["%s_%s" % (net, ext)] = int8 if model == "int8" and net != "decoder" else plain
    files["tokens"] = os.path.join(model_dir, "tokens.txt")
    return files


def missing_files(model_dir, model):
    return [p for p in model_files(model_dir, model).values() if not os.path.isfile(p)]


def read_wav(path):
    """(float32 samples in [-1, 1], sample rate) of a PCM wav with the standard library; channels are averaged."""
    import numpy as np
    with wave.open(path, "rb") as w:
        width, channels, rate = w.getsampwidth(), w.getnchannels(), w.getframerate()
        raw = w.readframes(w.getnframes())
    if width == 1:
        x = (np.frombuffer(raw, dtype=np.uint8).astype(np.float32) - 128.0) / 128.0
    elif width == 2:
        x = np.frombuffer(raw, dtype="<i2").astype(np.float32) / 32768.0
    elif width == 3:
        b = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 3).astype(np.int32)
        v = b[:, 0] | (b[:, 1] << 8) | (b[:, 2] << 16)
        x = (np.where(v >= 1 << 23, v - (1 << 24), v)).astype(np.float32) / float(1 << 23)
    elif width == 4:
        x = np.frombuffer(raw, dtype="<i4").astype(np.float32) / float(1 << 31)
    else:
        raise ValueError("%d-byte samples" % width)
    if channels > 1:
        x = x.reshape(-1, channels).mean(axis=1)
    return np.ascontiguousarray(x, dtype=np.float32), rate


def _vm_hwm_mb():
    """This process's own peak RSS (Linux VmHWM). wait4's ru_maxrss also counts the parent's size at the fork
    (Linux carries the old memory's high-water mark across exec), which would hide a small model's footprint."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return round(int(line.split()[1]) / 1024.0, 1)
    except (OSError, ValueError, IndexError):
        pass
    return None


def measure(model_dir, model, threads, wavs):
    """Decode every wav with one recognizer configuration; the figures as a dict (runs in the child)."""
    import numpy as np
    import sherpa_ncnn
    files = model_files(model_dir, model)
    t0 = time.perf_counter()
    rec = sherpa_ncnn.Recognizer(num_threads=threads, **files)
    load = time.perf_counter() - t0
    print("LOADED", flush=True)
    audio = compute = 0.0
    first = None
    texts = []
    for i, path in enumerate(wavs):
        samples, rate = read_wav(path)
        if i and hasattr(rec, "recognizer"):  # a fresh stream per file: the old one carries the last file's state
            rec.stream = rec.recognizer.create_stream()
        elif i:  # a sherpa_ncnn without that attribute: a fresh recognizer (its load is not counted)
            rec = sherpa_ncnn.Recognizer(num_threads=threads, **files)
        step = max(1, int(rate * CHUNK_SECONDS))
        start = time.perf_counter()
        for k in range(0, len(samples), step):
            rec.accept_waveform(rate, samples[k:k + step])
            if first is None and rec.text.strip():
                first = time.perf_counter() - start
        rec.accept_waveform(rate, np.zeros(int(rate * TAIL_SECONDS), dtype=np.float32))
        rec.input_finished()
        if first is None and rec.text.strip():
            first = time.perf_counter() - start
        compute += time.perf_counter() - start
        audio += len(samples) / float(rate)
        texts.append(rec.text)
    return {"model": model, "threads": threads, "load_seconds": round(load, 4), "vm_hwm_mb": _vm_hwm_mb(),
            "rtf": round(compute / audio, 4) if audio else None, "audio_seconds": round(audio, 3),
            "decode_seconds": round(compute, 4), "first_result_seconds": None if first is None else round(first, 4),
            "texts": texts}


def run_one(model_dir, model, threads, wavs, timeout=600):
    """One measurement in a child process, with the peak RSS of exactly that child (os.wait4); a crash is
    reported in the row's 'error', never raised."""
    cfg = json.dumps({"dir": model_dir, "model": model, "threads": threads, "wavs": wavs})
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--child", cfg], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    out, err = _drain(proc.stdout.fileno(), proc.stderr.fileno(), proc.pid, timeout)
    pid = proc.pid
    _, status, usage = os.wait4(pid, 0)  # reaped here, with the rusage of exactly this child
    proc.returncode = 0  # so Popen does not wait for it again
    proc.stdout.close()
    proc.stderr.close()
    rc = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
    row = {"model": model, "threads": threads}
    for line in out.splitlines():
        if line.startswith("RESULT "):
            row = json.loads(line[7:])
    if rc != 0 or "rtf" not in row:
        when = "while decoding" if "LOADED" in out else "while loading the model"
        tail = [l for l in err.strip().splitlines() if l.strip()][-2:]
        if rc == -9 and out.endswith("\nTIMEOUT"):
            what = "did not finish in %d s" % timeout
        elif rc < 0:
            what = "sherpa-ncnn was killed by signal %d %s" % (-rc, when)
        elif rc == 255:
            what = "sherpa-ncnn called exit(-1) %s" % when
        else:
            what = "the child exited with code %d %s" % (rc, when)
        row = {"model": model, "threads": threads, "error": what + (": " + " | ".join(tail) if tail else "")}
    # ru_maxrss is kilobytes on Linux, bytes on macOS
    scale = 1.0 / (1024 * 1024) if sys.platform == "darwin" else 1.0 / 1024
    row["rusage_maxrss_mb"] = round(usage.ru_maxrss * scale, 1)
    row["peak_mb"] = row.pop("vm_hwm_mb", None) or row["rusage_maxrss_mb"]
    return row


def _drain(out_r, err_r, pid, timeout):
    """Read the child's stdout and stderr to the end (select, so neither pipe fills); kill it after ``timeout``."""
    import select
    chunks = {out_r: [], err_r: []}
    open_fds = [out_r, err_r]
    deadline = time.monotonic() + timeout
    timed_out = False
    while open_fds:
        left = deadline - time.monotonic()
        if left <= 0 and not timed_out:
            os.kill(pid, 9)
            timed_out = True
        ready, _, _ = select.select(open_fds, [], [], max(left, 0.1) if not timed_out else 1.0)
        for fd in ready:
            data = os.read(fd, 65536)
            if data:
                chunks[fd].append(data)
            else:
                open_fds.remove(fd)
    out = b"".join(chunks[out_r]).decode("utf-8", "replace")
    err = b"".join(chunks[err_r]).decode("utf-8", "replace")
    return (out + "\nTIMEOUT" if timed_out else out), err


def cpu_count():
    """The cores this process may run on (a container's or taskset's limit included)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def table(rows):
    lines = ["%-6s %7s %8s %10s %9s %13s" % ("model", "threads", "rtf", "load (s)", "peak MB", "first result")]
    for r in rows:
        if r.get("error"):
            lines.append("%-6s %7s  failed: %s" % (r["model"], r["threads"], r["error"]))
            continue
        first = "-" if r.get("first_result_seconds") is None else "%.3f s" % r["first_result_seconds"]
        lines.append("%-6s %7d %8.3f %10.3f %9.1f %13s" % (r["model"], r["threads"], r["rtf"], r["load_seconds"],
                                                           r["peak_mb"], first))
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description="Speed of this sherpa-ncnn model on this device (needs only "
                                            "sherpa_ncnn and numpy).")
    p.add_argument("--dir", default=HERE, help="the model directory (default: this script's)")
    p.add_argument("--wav", action="append", default=[], help="a test wav, PCM (repeatable; default: test_wavs/*.wav)")
    p.add_argument("--threads", type=int, nargs="+", help="thread counts (default: 1 and all cores)")
    p.add_argument("--model", choices=("fp16", "int8"), action="append", help="default: fp16, and int8 when present")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        cfg = json.loads(a.child)
        print("RESULT " + json.dumps(measure(cfg["dir"], cfg["model"], cfg["threads"], cfg["wavs"])), flush=True)
        return 0
    wavs = a.wav
    if not wavs:
        folder = os.path.join(a.dir, "test_wavs")
        wavs = sorted(os.path.join(folder, n) for n in os.listdir(folder)) if os.path.isdir(folder) else []
        wavs = [w for w in wavs if w.lower().endswith(".wav")]
    if not wavs:
        print("no test wavs: give --wav FILE (16 kHz mono PCM is what the model hears)", file=sys.stderr)
        return 2
    for w in wavs:
        try:
            read_wav(w)
        except (OSError, EOFError, ValueError, wave.Error) as exc:
            print("%s: cannot be read as a PCM wav (%s)" % (w, exc), file=sys.stderr)
            return 2
    models = a.model or ["fp16"] + (["int8"] if not missing_files(a.dir, "int8") else [])
    for m in models:
        gone = missing_files(a.dir, m)
        if gone:
            print("%s: %s model files missing: %s" % (a.dir, m, ", ".join(os.path.basename(g) for g in gone)),
                  file=sys.stderr)
            return 2
    cores = cpu_count()
    threads = a.threads or sorted({1, cores})
    if any(t < 1 for t in threads):
        print("--threads: give counts of 1 or more", file=sys.stderr)
        return 2
    rows = [run_one(os.path.abspath(a.dir), m, t, [os.path.abspath(w) for w in wavs]) for m in models
            for t in threads]
    print(json.dumps(rows, indent=2) if a.json else table(rows))
    return 1 if any(r.get("error") for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
