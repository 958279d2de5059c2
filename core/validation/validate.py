"""Validate a produced model: torch vs ncnn numerically, and decoding in the real sherpa-ncnn.

Runs as its own process (``python -m core.validation.validate OUT ...``) because it
imports torch and ncnn; sherpa-ncnn itself runs in a further child process,
since a bad model segfaults it or makes it call ``exit(-1)``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.validation import prefetch
from core.validation.agreement import check_agreement
from core.validation.decoding import NETS, TAIL_PADDING_SECONDS, decode, report_decode
from core.validation.numeric import NumericResult
from core.validation.validate_int8 import start_cosine, validate_int8


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


# -- children started early ------------------------------------------------------

def start_children(out: Path, wavs: list[Path], references: dict[str, str], int8: bool, fp32_dir: Path | None,
                   run_decode: bool = True, jobs: int | None = None, int8_reference: Path | None = None) -> None:
    """Start the work that runs in child processes (sherpa-ncnn decodes, the int8 cosine) now, so it overlaps the
    torch work in this process: one child at a time per lane left beside torch's (none with ``jobs=1``: then
    each runs here when collected)."""
    prefetch.make_pool(jobs)
    # the longest first (the int8 cosine runs the fp32 and the int8 nets over every wav), so that the decodes left
    # at the end can be shared out between the pool and this thread (run_queued_here)
    if int8 and (int8_reference is not None or (wavs and fp32_dir is not None)):
        start_cosine(out, fp32_dir, wavs, jobs, int8_reference)
    if run_decode:
        prefetch.start(("decode", str(out), False), decode, out, wavs, references)
    if int8:
        prefetch.start(("decode", str(out), True), decode, out, wavs, references, True)


def _start_numeric(out: Path, torch_side: dict) -> tuple:
    """torch's inputs and outputs to a file, and the ncnn half of the numeric check started on them in a child
    (in the pool when there is one: it then overlaps torch's streaming decode)."""
    import os
    import tempfile

    from core.validation.numeric import compare_in_child, save_chunks
    fd, name = tempfile.mkstemp(prefix=".numeric-", suffix=".npz", dir=out)
    os.close(fd)
    save_chunks(Path(name), torch_side)
    pool = prefetch._POOL.get("pool")
    future = prefetch.submit(pool, compare_in_child, out, Path(name)) if pool is not None else None
    return out, Path(name), future


def _finish_numeric(pending: tuple, timings: dict) -> dict:
    from core.validation.numeric import compare_in_child
    out, npz, future = pending
    try:
        result, exc, seconds = prefetch.result(future, compare_in_child, out, npz)
    finally:
        npz.unlink(missing_ok=True)
    timings["numeric (ncnn child)"] = round(seconds, 3)
    if exc is not None:
        return {net: f"the ncnn side could not run: {exc}" for net in NETS}
    return result


def detect_arch(out: Path) -> str | None:
    from core.model.architectures import BY_MODEL_TYPE
    from core.model.metadata import read_metadata
    from core.ncnn.param import load_param
    parsed = load_param(out / "encoder_jit_trace-pnnx.ncnn.param")
    meta = read_metadata(parsed.model) if parsed.model else None
    spec = BY_MODEL_TYPE.get(meta.get(0)) if meta else None
    return spec.name if spec else None


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


def _torch_work(out: Path, arch: str | None, traced_dir: Path | None, wavs: list[Path], numeric: bool,
                run_decode: bool, report: dict, on_numeric) -> dict:
    """torch's side of the fp16 checks: the numeric check's inputs and outputs (net -> chunks, handed to
    ``on_numeric`` as soon as they exist, before torch's decode) and its errors (net -> sentence, returned), and
    torch's streaming decode of every wav (kept by core.validation.agreement)."""
    import time
    timings = report["timings"]
    has_traced = traced_dir is not None and (traced_dir / "encoder_jit_trace-pnnx.pt").exists()
    shared = None  # the agreement check's traced modules, loaded once and used by the numeric check too
    if has_traced and (numeric or run_decode):
        t0 = time.perf_counter()
        import torch
        torch.set_num_threads(1)  # sherpa-ncnn's children run meanwhile on the other cores
        from core.model.traced import TracedError
        from core.validation.agreement import AgreementError, transducer
        try:
            shared = transducer(out, arch, traced_dir)
        except (AgreementError, TracedError, OSError):
            shared = None  # the numeric check loads its own; the agreement check reports the problem
        timings["torch import + load"] = round(time.perf_counter() - t0, 3)
    torch_side: dict = {}
    errors: dict[str, str] = {}
    if numeric and has_traced:
        t0 = time.perf_counter()
        features = None
        if wavs:
            from core.validation.agreement import features_for
            try:  # the agreement check's features of this wav (tail padding only adds frames at the end)
                features = features_for(str(wavs[0]), TAIL_PADDING_SECONDS)
            except Exception as exc:  # noqa: BLE001 - reported, then random features are used
                report["notes"].append(f"features from {wavs[0]} unavailable ({exc}); random inputs used")
        for net in NETS:
            try:
                torch_side[net] = torch_reference(net, traced_dir / f"{net}_jit_trace-pnnx.pt", features,
                                                  **_torch_setup(out, arch, traced_dir, net),
                                                  traced=getattr(shared, net, None))
            except Exception as exc:  # noqa: BLE001 - any failure here is a validation failure to report
                errors[net] = str(exc)
        timings["numeric (torch)"] = round(time.perf_counter() - t0, 3)
        if torch_side:
            on_numeric(torch_side)  # its ncnn half starts now, beside torch's streaming decode
    if run_decode:
        from core.validation.agreement import NO_WAV, prepare
        t0 = time.perf_counter()
        streams = prepare(out, arch, traced_dir, [str(w) for w in wavs] or [NO_WAV], TAIL_PADDING_SECONDS)
        timings["torch streaming decode"] = round(time.perf_counter() - t0, 3)
        report["torch_wavs_per_call"] = streams  # several: the encoder streamed them side by side (batched)
    return errors


def validate(out: Path, arch: str | None, traced_dir: Path | None, wavs: list[Path], references: dict[str, str],
             numeric: bool = True, run_decode: bool = True, print_fn=print) -> dict:
    """The fp16 checks: torch's side here (sherpa-ncnn's and ncnn's in child processes meanwhile)."""
    import time
    report = new_report()
    timings = report["timings"]
    arch = arch or detect_arch(out)
    has_traced = traced_dir is not None and (traced_dir / "encoder_jit_trace-pnnx.pt").exists()
    started: list = []
    # with one core for both (a background validation beside calibration), the sherpa-ncnn decode started early
    # goes first and torch's work after it: torch's one-wav-per-call decodes can then spread over a core that
    # comes free later, where the decode is one job that cannot
    prefetch.yield_lane()
    prefetch.take_lane()
    errors = _torch_work(out, arch, traced_dir, wavs, numeric, run_decode, report,
                         lambda side: started.append(_start_numeric(out, side)))
    pending_numeric = started[0] if started else None
    if numeric and not has_traced:
        report["notes"].append("numeric check skipped: no traced *_jit_trace-pnnx.pt files")
        print_fn("numeric check skipped: no traced *_jit_trace-pnnx.pt files")
    prefetch.run_queued_here()  # torch is done: its core takes the children still queued
    if numeric and has_traced:
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
        report_decode(prefetch.collect(("decode", str(out), False), decode, out, wavs, references,
                                       timings=timings, name="sherpa-ncnn fp16 decode"), report, print_fn)
        t0 = time.perf_counter()
        check_agreement(out, arch, traced_dir, report["decode"], report, print_fn)
        timings["agreement fp16 (compare)"] = round(time.perf_counter() - t0, 3)
    if traced_dir is not None:
        from core.validation.agreement import torch_decodes
        report["torch_decodes"] = torch_decodes(traced_dir)  # the int8 check's torch side, when it runs apart
    return report


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
    p.add_argument("--int8-only", action="store_true",
                   help="check only the int8 set, without torch: its sherpa-ncnn decode and cosine vs fp32 (the "
                        "agreement with torch's decodes comes with --fp16-report/--int8-report)")
    p.add_argument("--fp16-report", type=Path, default=None,
                   help="with --int8-report: the two halves' reports in one (--json-out), adding the int8 tokens' "
                        "agreement with the torch decodes of this report of the fp16 checks")
    p.add_argument("--int8-report", type=Path, default=None, help="the --int8-only report")
    p.add_argument("--int8-reference", type=Path, default=None,
                   help="the int8 cosine's fp32 half, recorded earlier (by the built-in calibration, or python -m "
                        "core.int8.children int8-reference)")
    p.add_argument("--jobs", type=int, default=None,
                   help="how many things to run at once (default: one per core the steps running beside leave, "
                        "followed as they start and end)")
    a = p.parse_args(argv)
    refs = dict(r.split("=", 1) for r in a.reference if "=" in r)
    say = lambda s: print(s, flush=True)  # noqa: E731
    fp32_dir = a.fp32_dir or a.out / "work" / "fp32"
    if a.fp16_report is not None or a.int8_report is not None:  # the two halves ran beside each other
        reports = []
        for path, half, step in ((a.fp16_report, "fp16", "validate"), (a.int8_report, "int8", "validate-int8")):
            reports.append(_read_report(path) if path is not None else None)
            if reports[-1] is None:
                say(f"-[✗] {path or '--' + half + '-report'}: the {half} validation's report is missing or "
                    f"unreadable; run the {step} step again (--resume reruns it)")
                return 1
        from core.validation.validate_int8 import merge_int8_report
        merge_int8_report(reports[0], reports[1], a.out, a.arch, a.traced_dir, say)
        return finish_report(reports[0], a.json_out)
    if a.int8_only:  # the int8 half alone, beside the fp16 half (which loads torch)
        report = new_report()
        say(f"validating the int8 set in {a.out}: sherpa-ncnn and the int8 cosine in child processes ...")
        start_children(a.out, a.wav, refs, True, fp32_dir, False, a.jobs, a.int8_reference)
        prefetch.run_queued_here()  # nothing else to do here: this thread takes its share of the children
    else:
        # the log pane's first line at once: loading torch and the traced modules takes seconds before any result
        say(f"validating {a.out}: sherpa-ncnn decodes start in child processes; loading torch and the traced "
            "modules ...")
        start_children(a.out, a.wav, refs, a.int8, fp32_dir, not a.no_decode, a.jobs)
        report = validate(a.out, a.arch, a.traced_dir, a.wav, refs, not a.no_numeric, not a.no_decode, print_fn=say)
    if a.int8 or a.int8_only:
        validate_int8(a.out, fp32_dir, a.wav, refs, report, print_fn=say,
                      traced_dir=None if a.int8_only else a.traced_dir, arch=a.arch, jobs=a.jobs,
                      reference=a.int8_reference)
    prefetch.shutdown()
    return finish_report(report, a.json_out)


def new_report() -> dict:
    """A validation report before any check has run (either half's)."""
    return {"numeric": [], "decode": None, "ok": True, "notes": [], "timings": {}}


def _read_report(path: Path) -> dict | None:
    """A half's report as written (None when missing or not one)."""
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(report, dict) or not isinstance(report.get("notes"), list) or "ok" not in report:
        return None
    report.setdefault("timings", {})
    return report


def finish_report(report: dict, json_out: Path | None) -> int:
    """The end of a validation process: the report as JSON (when asked), the verdict line, the exit code."""
    if json_out:
        from core.common.atomic import atomic_write_bytes
        atomic_write_bytes(json_out, json.dumps(report, indent=2).encode())
    print("validation passed" if report["ok"] else "validation FAILED", flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    import faulthandler
    faulthandler.enable()  # torch and ncnn run the user's model in this process: a crash says where, in the log
    sys.exit(main())
