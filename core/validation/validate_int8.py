"""The int8 half of validation: sherpa-ncnn decodes the int8 set, its tokens are compared with torch's (reported,
not failed), and the int8 encoder/joiner outputs with fp32's on the same inputs (cosine per output; in a run, on the
fp32 half the built-in calibration recorded, or an int8-reference step with an external calibration tool).

In a run with --int8 this half runs as its own background step after quantization (--int8-only: no torch), while
the fp16 half finishes beside it; ``merge_int8_report`` then puts the two in one report and compares the int8
tokens with torch's decodes from the fp16 half's report."""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from core.validation import prefetch
from core.validation.agreement import check_agreement
from core.validation.decoding import decode, report_decode


def cosine_parts(wavs: list[Path], jobs: int | None = None) -> list[list[Path]]:
    """The wavs shared out between the int8 cosine's children: one more part than lanes (the int8 decode takes a
    lane too), each a child that loads the four nets once."""
    n = min(len(wavs), prefetch.lanes(jobs) + 1 if prefetch.lanes(jobs) > 1 else 1)
    return [wavs[i::n] for i in range(n)] if n else []


def int8_similarity(out: Path, fp32_dir: Path, wavs: list[Path]):
    from core.int8.calibration import ModelFiles
    from core.int8.check import compare_int8
    fp32 = ModelFiles(out / "encoder_jit_trace-pnnx.ncnn.param", fp32_dir / "encoder_jit_trace-pnnx.ncnn.bin",
                      out / "decoder_jit_trace-pnnx.ncnn.param", out / "decoder_jit_trace-pnnx.ncnn.bin",
                      out / "joiner_jit_trace-pnnx.ncnn.param", fp32_dir / "joiner_jit_trace-pnnx.ncnn.bin")
    return compare_int8(fp32, (out / "encoder_jit_trace-pnnx.ncnn.int8.param",
                               out / "encoder_jit_trace-pnnx.ncnn.int8.bin"),
                        (out / "joiner_jit_trace-pnnx.ncnn.int8.param", out / "joiner_jit_trace-pnnx.ncnn.int8.bin"),
                        wavs)


def merge_similarities(parts: list[list]) -> list:
    """One Similarity per (net, output) from the parts' (each over its own wavs): the worst of the worst frames,
    the mean weighted by each part's samples."""
    from core.int8.check import Similarity
    merged: dict[tuple[str, str], Similarity] = {}
    for part in parts:
        for s in part:
            m = merged.get((s.net, s.output))
            if m is None:
                merged[(s.net, s.output)] = Similarity(s.net, s.output, s.min_cosine, s.mean_cosine, s.samples, s.audio)
                continue
            total = m.samples + s.samples
            mean = (m.mean_cosine * m.samples + s.mean_cosine * s.samples) / total if total else m.mean_cosine
            merged[(s.net, s.output)] = Similarity(s.net, s.output, min(m.min_cosine, s.min_cosine), mean, total, m.audio)
    return list(merged.values())


def recorded_similarity(out: Path, reference: Path):
    """The int8 half only, on the fp32 half recorded earlier (core.int8.check_reference)."""
    from core.int8.check_reference import compare_recorded_in_child
    return compare_recorded_in_child(reference, (out / "encoder_jit_trace-pnnx.ncnn.int8.param",
                                                 out / "encoder_jit_trace-pnnx.ncnn.int8.bin"),
                                     (out / "joiner_jit_trace-pnnx.ncnn.int8.param",
                                      out / "joiner_jit_trace-pnnx.ncnn.int8.bin"))


def _cosine_jobs(out: Path, fp32_dir: Path, wavs: list[Path], jobs: int | None, reference: Path | None) -> list:
    """(key, fn, args) of the cosine's children: one on the recorded fp32 half, else the wavs shared out."""
    if reference is not None:
        return [(("int8-cosine", str(out), "recorded"), recorded_similarity, (out, reference))]
    return [(("int8-cosine", str(out), i), int8_similarity, (out, fp32_dir, part))
            for i, part in enumerate(cosine_parts(wavs, jobs))]


def start_cosine(out: Path, fp32_dir: Path, wavs: list[Path], jobs: int | None = None,
                 reference: Path | None = None) -> None:
    for key, fn, args in _cosine_jobs(out, fp32_dir, wavs, jobs, reference):
        prefetch.start(key, fn, *args)


def validate_int8(out: Path, fp32_dir: Path, wavs: list[Path], references: dict[str, str], report: dict,
                  print_fn=print, target: float = 0.99, traced_dir: Path | None = None, arch: str | None = None,
                  extra_dirs: tuple[Path, ...] = (), jobs: int | None = None,
                  reference: Path | None = None) -> None:
    """The int8 set: decoded by sherpa-ncnn, its token agreement with torch (when the traced modules are
    there; reported, not failed), and compared with fp32 on the same inputs (cosine per output)."""
    timings = report.setdefault("timings", {})
    report_decode(prefetch.collect(("decode", str(out), True), decode, out, wavs, references, True, timings=timings,
                                   name="sherpa-ncnn int8 decode"), report, print_fn,
                  describe=lambda item: f"{item['text']!r}", key="decode_int8")
    if traced_dir is not None:
        _int8_agreement(out, arch, traced_dir, report, print_fn, extra_dirs)
    if not wavs and reference is None:
        report["notes"].append("int8 similarity not measured: no wavs")
        return
    parts: dict = {}  # each child's own seconds
    sims = merge_similarities([prefetch.collect(key, fn, *args, timings=parts, name=str(key[-1]))
                               for key, fn, args in _cosine_jobs(out, fp32_dir, wavs, jobs, reference)])
    timings["int8 cosine (children, summed)"] = round(sum(parts.values()), 3)
    if not sims:
        why = "int8 similarity not measured: " + ("the recorded audio is" if reference is not None else
                                                   "the test wavs are") + " too short for one encoder chunk"
        report["notes"].append(why)
        print_fn(f"-[i] {why}")
        return
    report["int8_similarity"] = [asdict(s) for s in sims]
    for s in sims:
        print_fn(s.line(target))
        if s.mean_cosine < target:
            report["notes"].append(f"int8 {s.net} {s.output}: mean cosine {s.mean_cosine:.4f} is below {target}; "
                                   "try more calibration audio, or keep the most sensitive layers in float")


INT8_KEYS = ("decode_int8", "int8_similarity")  # what the --int8-only report adds to the fp16 checks' report


def merge_int8_report(report: dict, int8: dict, out: Path, arch: str | None, traced_dir: Path | None,
                      print_fn=print) -> None:
    """The int8 half's report (run beside the fp16 half, without torch) added to the fp16 half's ``report``, and
    the int8 tokens compared with torch's decodes from the fp16 half (torch is not loaded when those cover every
    wav, as they do in a run)."""
    from core.validation.agreement import use_torch_decodes
    for key in INT8_KEYS:
        if key in int8:
            report[key] = int8[key]
    report["notes"] += [n for n in int8.get("notes", []) if isinstance(n, str)]
    report["timings"].update(int8.get("timings") or {})
    report["ok"] = bool(report["ok"] and int8.get("ok"))
    if traced_dir is not None and isinstance(report.get("decode_int8"), dict):
        use_torch_decodes(traced_dir, report.get("torch_decodes"))
        _int8_agreement(out, arch, traced_dir, report, print_fn)


def _int8_agreement(out: Path, arch: str | None, traced_dir: Path, report: dict, print_fn,
                    extra_dirs: tuple[Path, ...] = ()) -> None:
    """The int8 tokens vs torch's (reported, not failed), timed into the report."""
    import time
    t0 = time.perf_counter()
    check_agreement(out, arch, traced_dir, report["decode_int8"], report, print_fn, extra_dirs)
    report["timings"]["agreement int8 (compare)"] = round(time.perf_counter() - t0, 3)
