"""Calibration, quantization and the int8 check in a child process (``python -m core.int8.children ...``):
progress and log lines relayed as they come, a crash turned into one sentence naming the step, the file and
the first layer that crashes (core.validation.crash)."""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Callable

from core.int8.calibrate import CalibrationError
from core.ncnn.child import EXIT_ERROR, PROGRESS_RE, error_line, exit_text, run_child, say


class CalibrationCrashed(CalibrationError):
    """ncnn crashed during calibration or quantization; the message names the step, the file and the layer."""


KIND_LINE = "problem-kind: "  # the line before a child's "error: ..." giving its ProblemKind


def _reported_kind(lines: list[str]):
    """The ProblemKind the child reported before its error line (FAILED when it said none)."""
    from core.common.problems import ProblemKind
    values = [line[len(KIND_LINE):].strip() for line in lines if line.startswith(KIND_LINE)]
    try:
        return ProblemKind(values[-1]) if values else ProblemKind.FAILED
    except ValueError:
        return ProblemKind.FAILED


def calibrate_in_child(files, wavs: list[Path], on_progress: Callable[[int, int, str], None] | None = None,
                       cancelled: Callable[[], bool] | None = None, cache_dir: Path | None = None,
                       tables: tuple[Path, Path] | None = None, on_line: Callable[[str], None] | None = None,
                       step: str = "calibrate", histogram: str | None = None, reference: Path | None = None):
    """core.int8.calibration.calibrate, run in a child process; the same CalibrationResult back.

    Progress lines become ``on_progress`` calls as they come, every other line goes to ``on_line``. A
    reported problem raises CalibrationError with the child's sentence; a crash raises CalibrationCrashed (a
    CalibrationError) naming the step, the file and the first layer that crashes; cancelling raises
    ChildCancelled. ``tables``: where the child writes the two tables (a temporary place when None).
    ``histogram``: core.int8.calibrate.HISTOGRAM_MODES (default DEFAULT_HISTOGRAM). ``reference``: where the
    child writes the int8 check's fp32 half (core.int8.check_reference), recorded on the way.
    """
    import json

    from core.int8.calibrate import read_table
    from core.int8.calibration import CalibrationResult
    summary: dict = {}

    def line(text: str) -> None:
        m = PROGRESS_RE.match(text)
        if m:
            if on_progress is not None:
                on_progress(int(m.group(1)), int(m.group(2)), m.group(3))
        elif text.startswith("result: "):
            summary.update(json.loads(text[len("result: "):]))
        elif text.startswith(KIND_LINE):
            pass  # read from the lines when the child reports an error
        elif on_line is not None:
            on_line(text)

    with tempfile.TemporaryDirectory(prefix="calibrate-") as tmp:
        enc_table, join_table = tables or (Path(tmp) / "encoder-scale-table.txt", Path(tmp) / "joiner-scale-table.txt")
        args = ["calibrate", "--files", *map(str, (files.encoder_param, files.encoder_bin, files.decoder_param,
                                                   files.decoder_bin, files.joiner_param, files.joiner_bin)),
                "--tables", str(enc_table), str(join_table)]
        args += [a for w in wavs for a in ("--wav", str(w))]
        if cache_dir is not None:
            args += ["--cache-dir", str(cache_dir)]
        if histogram is not None:
            args += ["--histogram", histogram]
        if reference is not None:
            args += ["--reference", str(reference)]
        rc, lines = run_child(args, on_line=line, cancelled=cancelled, module=CHILD)
        if rc == EXIT_ERROR:
            raise CalibrationError(error_line(lines) or "calibration failed", _reported_kind(lines))
        if rc != 0:
            say = on_line or (lambda _s: None)
            say(f"ncnn ended the calibration child ({exit_text(rc)}); running the model layer by layer in child "
                "processes to find the layer")
            nets = [(files.encoder_param, files.encoder_bin), (files.decoder_param, files.decoder_bin),
                    (files.joiner_param, files.joiner_bin)]
            from core.validation.crash import crash_sentence
            raise CalibrationCrashed(crash_sentence(step, nets, rc))
        encoder = read_table(Path(enc_table).read_text(), str(enc_table))
        joiner = read_table(Path(join_table).read_text(), str(join_table))
    for part, table in (("encoder", encoder), ("joiner", joiner)):
        for name, (absmax, threshold) in summary.get("activations", {}).get(part, {}).items():
            if name in table.activations:
                table.activations[name].absmax, table.activations[name].threshold = absmax, threshold
    return CalibrationResult(encoder, joiner, summary.get("files", 0), summary.get("chunks", 0),
                             summary.get("frames", 0), summary.get("seconds", 0.0),
                             summary.get("forward_seconds", 0.0), summary.get("skipped", []),
                             summary.get("histogram", histogram))


def quantize_in_child(param: Path, binary: Path, table_path: Path, out_param: Path, out_bin: Path,
                      step: str = "quantize", cancelled: Callable[[], bool] | None = None) -> dict:
    """core.int8.quantize.quantize of one net in a child process: its report as a dict. A reported problem raises
    CalibrationError with the child's sentence, a crash one naming the step and the file."""
    import json

    result: dict = {}
    rc, lines = run_child(["quantize", str(param), str(binary), str(table_path), str(out_param), str(out_bin)],
                          on_line=lambda t: result.update(json.loads(t[8:])) if t.startswith("result: ") else None,
                          cancelled=cancelled, module=CHILD)
    if rc == EXIT_ERROR:
        raise CalibrationError(error_line(lines) or "quantization failed")
    if rc != 0:
        said = [x for x in lines if x.strip() and not x.startswith("result: ")][-3:]
        raise CalibrationCrashed(f"{step}: ncnn crashed ({exit_text(rc)}) in a child process while reading the weights of "
                           f"{param} with {binary}" + (f": {'; '.join(said)}" if said else ""))
    return result


def child_calibrate(a) -> int:
    import json

    from core.common.atomic import WriteError, atomic_write_bytes
    from core.common.problems import ProblemKind
    from core.int8.calibrate import CalibrationError
    from core.int8.calibration import ModelFiles, calibrate
    files = ModelFiles(*map(Path, a.files))
    try:
        result = calibrate(files, list(map(Path, a.wav)), on_progress=lambda i, n, note: say(f"progress: {i}/{n} {note}"),
                           cache_dir=Path(a.cache_dir) if a.cache_dir else None, histogram=a.histogram,
                           reference=Path(a.reference) if a.reference else None)
    except CalibrationError as exc:
        say(f"{KIND_LINE}{exc.kind.value}")  # the kind crosses the process boundary on its own line
        say(f"error: {exc}")
        return EXIT_ERROR
    try:
        from core.int8.histograms import HISTOGRAMS, document  # beside the tables (still written last)
        atomic_write_bytes(Path(a.tables[0]).parent / HISTOGRAMS, json.dumps(document(result.worst)).encode())
        atomic_write_bytes(Path(a.tables[0]), result.encoder.text().encode())
        atomic_write_bytes(Path(a.tables[1]), result.joiner.text().encode())
    except WriteError as exc:  # e.g. the disk is full: a sentence naming the file (the write left no partial table)
        say(f"{KIND_LINE}{ProblemKind.FAILED.value}")
        say(f"error: {exc}")
        return EXIT_ERROR
    summary = {"files": result.files, "chunks": result.chunks, "frames": result.frames,
               "seconds": result.seconds, "forward_seconds": result.forward_seconds, "skipped": result.skipped,
               "histogram": result.histogram,
               "activations": {part: {a.layer: [a.absmax, a.threshold] for a in table.activations.values()}
                               for part, table in (("encoder", result.encoder), ("joiner", result.joiner))}}
    say("result: " + json.dumps(summary))
    return 0


def child_quantize(a) -> int:
    import json

    from core.int8.calibrate import read_table
    from core.int8.quantize import QuantizeError, quantize
    try:
        table = read_table(Path(a.table).read_text(), str(a.table))
        report = quantize(Path(a.param), Path(a.bin), table, Path(a.out_param), Path(a.out_bin))
    except (CalibrationError, QuantizeError) as exc:
        say(f"error: {exc}")
        return EXIT_ERROR
    say("result: " + json.dumps({k: v for k, v in vars(report).items() if isinstance(v, (int, str, list))}))
    return 0


def child_int8_check(a) -> int:
    import json
    from dataclasses import asdict

    from core.int8.calibration import ModelFiles
    from core.int8.check import compare_int8_here
    from core.int8.check_reference import compare_recorded
    try:
        if a.reference:  # the fp32 half was recorded earlier (core.int8.check_reference)
            sims = compare_recorded(Path(a.reference), tuple(map(Path, a.int8_encoder)),
                                    tuple(map(Path, a.int8_joiner)))
        else:
            sims = compare_int8_here(ModelFiles(*map(Path, a.fp32)), tuple(map(Path, a.int8_encoder)),
                                     tuple(map(Path, a.int8_joiner)), list(map(Path, a.wav)))
    except (ValueError, CalibrationError, OSError, KeyError) as exc:
        say(f"error: {exc}")
        return EXIT_ERROR
    say("result: " + json.dumps([asdict(s) for s in sims]))
    return 0


def child_int8_reference(a) -> int:
    from core.int8.calibration import ModelFiles
    from core.int8.check_reference import record_fp32
    try:
        record_fp32(ModelFiles(*map(Path, a.fp32)), list(map(Path, a.wav)), Path(a.out))
    except (ValueError, CalibrationError, OSError) as exc:
        say(f"error: {exc}")
        return EXIT_ERROR
    say(f"recorded {a.out}")
    return 0


CHILD = "core.int8.children"


def main(argv: list[str] | None = None) -> int:
    import argparse
    p = argparse.ArgumentParser(prog=f"python -m {CHILD}", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ca = sub.add_parser("calibrate", help="core.int8.calibration.calibrate; progress as 'progress: i/n note' lines")
    ca.add_argument("--files", nargs=6, required=True, metavar="PATH",
                    help="encoder param/bin, decoder param/bin, joiner param/bin")
    ca.add_argument("--wav", action="append", default=[])
    ca.add_argument("--cache-dir", default=None)
    from core.int8.calibrate import DEFAULT_HISTOGRAM, HISTOGRAM_MODES
    ca.add_argument("--histogram", choices=HISTOGRAM_MODES, default=DEFAULT_HISTOGRAM)
    ca.add_argument("--tables", nargs=2, required=True, metavar=("ENCODER_TABLE", "JOINER_TABLE"))
    ca.add_argument("--reference", default=None, help="also record the int8 check's fp32 half here (.npz)")
    qu = sub.add_parser("quantize", help="core.int8.quantize.quantize of one net")
    for name in ("param", "bin", "table", "out_param", "out_bin"):
        qu.add_argument(name)
    ic = sub.add_parser("int8-check", help="core.int8.check: cosine of the int8 encoder/joiner vs fp32")
    ic.add_argument("--fp32", nargs=6, metavar="PATH")
    ic.add_argument("--reference", default=None, help="the fp32 half recorded by int8-reference (then no --fp32)")
    ic.add_argument("--int8-encoder", nargs=2, required=True, metavar="PATH")
    ic.add_argument("--int8-joiner", nargs=2, required=True, metavar="PATH")
    ic.add_argument("--wav", action="append", default=[])
    ir = sub.add_parser("int8-reference", help="core.int8.check_reference: record the int8 check's fp32 half")
    ir.add_argument("--fp32", nargs=6, required=True, metavar="PATH")
    ir.add_argument("--wav", action="append", default=[])
    ir.add_argument("--out", required=True)
    a = p.parse_args(argv)
    if a.command == "int8-check" and not a.reference and not a.fp32:
        p.error("int8-check needs --fp32 (or --reference)")
    if a.command == "int8-reference":
        return child_int8_reference(a)
    if a.command == "int8-check":
        return child_int8_check(a)
    if a.command == "calibrate":
        return child_calibrate(a)
    return child_quantize(a)


if __name__ == "__main__":
    sys.exit(main())
