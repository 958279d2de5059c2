"""`sherpa-ncnn-wizard calibrate` and `quantize`: the built-in int8 tools on existing files."""
from __future__ import annotations

from pathlib import Path

from rich.text import Text

from tui.cli.common import emit_json, stderr_console, stdout_console
from tui.cli.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK


def _wavs(args) -> list[Path]:
    wavs = [Path(w) for w in args.wav]
    if args.wav_list:
        wavs += [Path(line.strip()) for line in Path(args.wav_list).read_text().splitlines() if line.strip()]
    return wavs


def calibration_exit_code(exc) -> int:
    """The input's fault (no usable audio, no SherpaMetaData) is EXIT_BAD_INPUT, anything else EXIT_FAILED."""
    from core.common.problems import ProblemKind, kind_of
    return EXIT_BAD_INPUT if kind_of(exc) is ProblemKind.BAD_INPUT else EXIT_FAILED


def run_calibrate(args) -> int:
    from core.int8.calibrate import CalibrationError
    from core.int8.calibration import ModelFiles
    from core.int8.children import calibrate_in_child as calibrate  # ncnn in a child: a crash is a sentence

    d = Path(args.dir)
    names = {n: (d / f"{n}_jit_trace-pnnx.ncnn.param", d / f"{n}_jit_trace-pnnx.ncnn.bin")
             for n in ("encoder", "decoder", "joiner")}
    missing = [str(p) for pair in names.values() for p in pair if not p.exists()]
    if missing:
        stderr_console().print(f"error: missing {', '.join(missing)}")
        return EXIT_BAD_INPUT
    try:
        wavs = _wavs(args)
    except OSError as exc:
        stderr_console().print(f"error: {args.wav_list}: {exc.strerror}")
        return EXIT_BAD_INPUT
    except UnicodeDecodeError as exc:
        stderr_console().print(f"error: {args.wav_list}: not a text list of wav paths (byte {exc.start} is not "
                               "UTF-8); write one path per line")
        return EXIT_BAD_INPUT
    out = Path(args.out) if args.out else d
    console = stdout_console()
    progress = (lambda i, n, s: None) if args.json else (lambda i, n, s: console.print(f"[{i}/{n}] {s}",
                                                                                       markup=False))
    files = ModelFiles(*names["encoder"], *names["decoder"], *names["joiner"])
    try:
        result = calibrate(files, wavs, on_progress=progress, cache_dir=out / "calibration-cache",
                           histogram=getattr(args, "histogram", None))
    except CalibrationError as exc:
        if args.json:
            emit_json({"ok": False, "error": str(exc)})
        else:
            stderr_console().print(Text("error: ", style="bold red") + Text(str(exc)))
        return calibration_exit_code(exc)
    from core.common.atomic import WriteError, atomic_write_bytes
    try:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out / "encoder-scale-table.txt", result.encoder.text().encode())
        atomic_write_bytes(out / "joiner-scale-table.txt", result.joiner.text().encode())
    except (WriteError, OSError) as exc:
        message = str(exc) if isinstance(exc, WriteError) else f"{exc.filename}: {exc.strerror}"
        if args.json:
            emit_json({"ok": False, "error": message})
        else:
            stderr_console().print(Text("error: ", style="bold red") + Text(message + " (the statistics are cached: "
                                                                             "a rerun only chooses the thresholds)"))
        return EXIT_FAILED
    report = {"ok": True, "files": result.files, "chunks": result.chunks, "frames": result.frames,
              "seconds": round(result.seconds, 3), "skipped": result.skipped, "histogram": result.histogram,
              "encoder_layers": list(result.encoder.activations), "joiner_layers": list(result.joiner.activations),
              "tables": [str(out / "encoder-scale-table.txt"), str(out / "joiner-scale-table.txt")]}
    if args.json:
        emit_json(report)
    else:
        for s in result.skipped:
            console.print(Text("skipped: ", style="yellow") + Text(s))
        for part, table in (("encoder", result.encoder), ("joiner", result.joiner)):
            for a in table.activations.values():
                console.print(f"{part} {a.layer:<28} max = {a.absmax:<12.6g} threshold = {a.threshold:<12.6g} "
                              f"scale = {a.scale:.6g}", markup=False)
        console.print(Text(f"tables written: {report['tables'][0]}, {report['tables'][1]} "
                           f"({result.files} files, {result.seconds:.1f} s)", style="green"))
    return EXIT_OK


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and a.exists() and a.samefile(b))
    except OSError:
        return False


def quantize_usage_problems(args) -> list[str]:
    """Outputs that would overwrite an input (the fp32 model or the table) are refused before anything runs."""
    ins = {"PARAM": Path(args.param), "BIN": Path(args.bin), "TABLE": Path(args.table)}
    outs = {"OUT_PARAM": Path(args.out_param), "OUT_BIN": Path(args.out_bin)}
    problems = [f"{o} {op} is the same file as {i} {ip}; write the int8 model to new files"
                for o, op in outs.items() for i, ip in ins.items() if _same_file(ip, op)]
    if _same_file(outs["OUT_PARAM"], outs["OUT_BIN"]):
        problems.append(f"OUT_PARAM and OUT_BIN are the same file ({args.out_param}); give two names")
    return problems


def run_quantize(args) -> int:
    from core.common.atomic import WriteError
    from core.int8.calibrate import CalibrationError, read_table
    from core.int8.quantize import quantize

    def fail(message: str, code: int) -> int:
        if args.json:
            emit_json({"ok": False, "error": message})
        else:
            stderr_console().print(Text("error: ", style="bold red") + Text(message))
        return code

    problems = quantize_usage_problems(args)
    if problems:
        return fail("; ".join(problems), EXIT_BAD_INPUT)
    try:
        table_bytes = Path(args.table).read_bytes()
        try:
            table_text = table_bytes.decode("utf-8")
        except UnicodeDecodeError as exc:
            return fail(f"{args.table}: is not a text scale table (byte {exc.start} is not UTF-8)", EXIT_BAD_INPUT)
        table = read_table(table_text, args.table)
        report = quantize(Path(args.param), Path(args.bin), table, Path(args.out_param), Path(args.out_bin))
    except OSError as exc:
        return fail(f"{exc.filename}: {exc.strerror}", EXIT_BAD_INPUT)
    except CalibrationError as exc:
        return fail(str(exc), EXIT_BAD_INPUT)
    except WriteError as exc:
        return fail(str(exc), EXIT_FAILED)
    data = {"ok": True, "quantized": report.quantized, "dynamic": report.dynamic, "fp16": report.fp16,
            "notes": report.notes, "kept_float": report.kept_float,
            "bin_bytes": [report.bytes_before, report.bytes_after],
            "weight_bytes": [report.weight_bytes_before, report.weight_bytes_after]}
    if args.json:
        emit_json(data)
    else:
        c = stdout_console()
        for name in report.quantized:
            c.print(f"quantized {name}", markup=False)
        for name in report.dynamic:
            c.print(f"quantized {name} (weight-only; activations at runtime)", markup=False)
        for note in report.notes:
            c.print(note, markup=False)
        c.print(f"weights of the quantized layers: {report.weight_bytes_before} -> {report.weight_bytes_after} bytes; "
                f".bin {report.bytes_before} -> {report.bytes_after} bytes", markup=False)
    return EXIT_OK
