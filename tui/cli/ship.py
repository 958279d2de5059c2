"""`bench` and `hotwords`, and the shipping part of `run`'s result (speed table, int8 by layer type).

Thin: the measuring (children, rusage) and the encoding live in core.validation.speed and core.model.hotwords.
"""
from __future__ import annotations

from pathlib import Path

from tui.cli.common import emit_json, stderr_console, stdout_console
from tui.cli.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK


def _error(text: str):
    from rich.text import Text
    return Text("error: ", style="bold red") + Text(text)


def add_ship_parsers(sub) -> None:
    bench = sub.add_parser(
        "bench", allow_abbrev=False,
        help="measure a model directory in sherpa-ncnn: real-time factor, first-result latency, load time, memory",
        description="Decode test wavs with the fp16 model (and int8 when present) at each thread count, every "
                    "configuration in its own sherpa-ncnn child process; its peak memory is that child's. The "
                    "same code a run writes as OUT/bench.py for the target device.",
        epilog="exit codes: 0 ok, 1 sherpa-ncnn failed in some configuration, 2 bad usage or bad input",
    )
    bench.add_argument("dir", metavar="DIR", help="directory with *_jit_trace-pnnx.ncnn.{param,bin} and tokens.txt")
    bench.add_argument("--wav", action="append", default=[], metavar="W",
                       help="a test wav, PCM (repeatable; default: DIR/test_wavs/*.wav)")
    bench.add_argument("--threads", type=int, nargs="+", metavar="N", help="thread counts (default: 1 and all cores)")
    bench.add_argument("--model", action="append", choices=("fp16", "int8"),
                       help="which set (repeatable; default: fp16, and int8 when its files are there)")
    bench.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")

    hot = sub.add_parser(
        "hotwords", allow_abbrev=False,
        help="turn plain words/phrases into the token-split hotwords file sherpa-ncnn reads",
        description="One word or phrase per line (optionally ending in :SCORE, the boost for that line; # starts a "
                    "comment). Each is split into the model's tokens with its bpe.model (without one: the word if it "
                    "is a token, else its characters) and every token is checked against tokens.txt, because "
                    "sherpa-ncnn exits on an unknown one (and on a word-start piece like \u2581THE: sherpa-ncnn reads the "
                    "leading \u2581 of tokens.txt as a space, so it cannot find those). Bad lines are named by number "
                    "and nothing is written. "
                    "Use the file with decoding_method=modified_beam_search and hotwords_file=F.",
        epilog="exit codes: 0 written, 2 bad input (a line that would fail, or an unusable file)",
    )
    hot.add_argument("words", metavar="WORDS_FILE", help="plain words or phrases, one per line")
    hot.add_argument("--tokens", required=True, metavar="T", help="the model's tokens.txt")
    hot.add_argument("--bpe-model", metavar="M", help="the bpe.model the model was trained with")
    hot.add_argument("--out", metavar="F", help="where to write the hotwords file (default: stdout)")


def _bench_wavs(args, folder: Path) -> list[Path]:
    if args.wav:
        return [Path(w).expanduser() for w in args.wav]
    return sorted((folder / "test_wavs").glob("*.wav"))


def run_bench(args) -> int:
    from core.validation.speed import SpeedError, check_inputs, format_table, measure
    err = stderr_console()
    folder = Path(args.dir).expanduser()
    wavs = _bench_wavs(args, folder)
    problems = check_inputs(folder, wavs, args.model, args.threads)
    if problems:
        for p in problems:
            err.print(_error(p))
        return EXIT_BAD_INPUT

    def on_row(row: dict) -> None:
        if not args.json:
            what = f"failed: {row['error']}" if row.get("error") else f"rtf {row['rtf']:.3f}"
            err.print(f"{row['model']}, {row['threads']} thread(s): {what}")
    try:
        report = measure(folder, wavs, args.model, args.threads, on_row=on_row)
    except SpeedError as exc:
        err.print(_error(str(exc)))
        return EXIT_BAD_INPUT
    if args.json:
        emit_json({"dir": str(folder.resolve()), "wavs": [str(w) for w in wavs], **report.as_dict()})
    else:
        stdout_console().print(format_table(report.rows), highlight=False)
    return EXIT_FAILED if report.errors else EXIT_OK


def run_hotwords(args) -> int:
    from core.common.atomic import WriteError, atomic_write_bytes
    from core.model.hotwords import HotwordsError, make_hotwords
    err = stderr_console()
    try:
        result = make_hotwords(Path(args.words).expanduser(), Path(args.tokens).expanduser(),
                               Path(args.bpe_model).expanduser() if args.bpe_model else None)
    except HotwordsError as exc:
        err.print(_error(str(exc)))
        return EXIT_BAD_INPUT
    if result.problems:
        for p in result.problems:
            err.print(_error(f"{args.words}: {p}"))
        err.print(f"nothing written: fix or remove the line(s) above ({len(result.lines)} line(s) were fine)")
        return EXIT_BAD_INPUT
    if args.out:
        try:
            atomic_write_bytes(Path(args.out).expanduser(), result.text.encode("utf-8"))
        except WriteError as exc:
            err.print(_error(str(exc)))
            return EXIT_BAD_INPUT
        err.print(f"wrote {args.out}: {len(result.lines)} hotword(s), every token in {args.tokens}")
    else:
        stdout_console().print(result.text, end="", highlight=False, markup=False)
    return EXIT_OK


def speed_table(rows: list[dict]):
    from rich.table import Table
    table = Table(title="speed in sherpa-ncnn", show_edge=False)
    for col in ("model", "threads", "rtf", "first result", "load", "peak"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for r in rows:
        first = "-" if r.get("first_result_seconds") is None else f"{r['first_result_seconds']:.3f} s"
        table.add_row(r["model"], str(r["threads"]), f"{r['rtf']:.3f}", first, f"{r['load_seconds']:.3f} s",
                      f"{r['peak_mb']:.1f} MB")
    return table


def int8_type_table(by_type: dict):
    """Per layer type: how many layers, how many became int8 / int8 weight-only / stayed float, and the bytes."""
    from rich.table import Table

    from core.common.formatting import human
    table = Table(title="int8 by layer type", show_edge=False)
    widest = max((len(k) for k in by_type), default=4)
    for col in ("type", "n", "int8", "w-only", "float", "fp16 size", "int8 size"):
        table.add_column(col, justify="left" if col == "type" else "right", no_wrap=True,
                         min_width=widest if col == "type" else None)
    for kind, t in by_type.items():
        table.add_row(kind, str(t["layers"]), str(t["int8"]), str(t["int8-weight-only"]), str(t["fp16"] + t["fp32"]),
                      human(t["bytes_fp16"]), human(t["bytes_after"]))
    return table


def print_ship_results(out, summary: dict) -> None:
    """The speed rows and the int8 report by layer type of a finished run's summary.json."""
    if summary.get("speed"):
        out.print(speed_table(summary["speed"]))
    wer = summary.get("dataset_wer") or {}
    for m in wer.get("models") or []:
        out.print(f"WER {m['model']}: {m['wer']:.2%} ({m['substitutions']} sub, {m['deletions']} del, "
                  f"{m['insertions']} ins / {m['words']} words)", highlight=False)
    if wer.get("int8_increase_points") is not None:
        out.print(f"int8 vs fp16: {wer['int8_increase_points']:+.2f} WER points", highlight=False)
    layers = summary.get("int8_layers") or {}
    if layers.get("by_type"):
        out.print(int8_type_table(layers["by_type"]))


def add_ship_options(args, planned, err) -> bool:
    """--dataset / --max-wer-increase / --package on a plan built without them (run --from-ncnn); True when refused."""
    from core.pipeline.ship_steps import add_dataset_step, add_package_step, dataset_problems
    if getattr(args, "dataset", None):
        problems = dataset_problems(args.dataset)
        if problems:
            for p in problems:
                err.print(_error(p))
            return True
        add_dataset_step(planned, str(Path(args.dataset).expanduser().resolve()), args.max_wer_increase)
    if getattr(args, "package", False):
        add_package_step(planned)
    return False
