"""Command line entry point: argument parsing and dispatch only.

Heavy libraries (torch, textual, sherpa_ncnn) are imported inside the
commands that need them, so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import sys

from core.model.architectures import ARCHITECTURES, EXPORT_ONLY_FLAGS
from tui.cli.exit_codes import EXIT_BAD_INPUT, EXIT_CODES_HELP, EXIT_INTERRUPTED, EXIT_OK


def _all_model_flags() -> dict[str, set[str]]:
    """Every icefall model flag, with the architectures that have it."""
    flags: dict[str, set[str]] = {}
    for spec in ARCHITECTURES.values():
        for hp in spec.hyperparams:
            flags.setdefault(hp.flag, set()).add(spec.name)
    return flags


def _arch_flag_help() -> str:
    lines = ["icefall hyperparameter flags, per architecture (defaults are icefall's):"]
    for spec in ARCHITECTURES.values():
        lines.append(f"  --arch {spec.name} ({spec.title}, {spec.recipe.rsplit('/', 1)[-1]}):")
        for hp in spec.hyperparams:
            key = f"  -> key {hp.meta_key}" if hp.meta_key is not None else ""
            lines.append(f"    {hp.flag} {hp.default}{key}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sherpa-ncnn-wizard",
        description="Take an icefall streaming transducer (Zipformer v1, ConvEmformer, LSTM) to a verified "
                    "sherpa-ncnn model. Without a command, opens the wizard (prints this help when not in a terminal).",
        epilog=EXIT_CODES_HELP,
        allow_abbrev=False,
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    parser.set_defaults(command=None)

    meta = sub.add_parser(
        "meta", allow_abbrev=False, formatter_class=argparse.RawDescriptionHelpFormatter,
        help="preview (and with --apply write) the SherpaMetaData line of an encoder .param",
        description="Build the SherpaMetaData line from icefall's export flags, check it against the graph and "
                    "show the edit. Nothing is written without --apply; --apply writes atomically and keeps "
                    "PARAM.orig (once).",
        epilog=_arch_flag_help() + "\n\nicefall export flags that are not hyperparameters ("
               + ", ".join(EXPORT_ONLY_FLAGS) + ") are accepted and ignored, so a whole export command "
               "line can be pasted.\n\n" + EXIT_CODES_HELP,
    )
    meta.add_argument("param", metavar="PARAM", help="the encoder .ncnn.param written by pnnx")
    meta.add_argument("--arch", required=True, choices=sorted(ARCHITECTURES), help="the model architecture")
    meta.add_argument("--apply", action="store_true", help="write the edit (atomic, with a .orig backup)")
    meta.add_argument("--force", action="store_true", help="with --apply: also edit a read-only file")
    meta.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")
    for flag in _all_model_flags():
        meta.add_argument(flag, dest="hp:" + flag, default=None, metavar="VALUE", help=argparse.SUPPRESS)
    for flag in EXPORT_ONLY_FLAGS:
        meta.add_argument(flag, dest="ignored:" + flag, default=None, metavar="VALUE", help=argparse.SUPPRESS)

    doctor = sub.add_parser(
        "doctor", allow_abbrev=False,
        help="diagnose an encoder .param or a model directory",
        description="Check an existing model the way sherpa-ncnn will load it: metadata, graph inputs, layer "
                    "counts, layer types the runtime lacks, tokens.txt. Exit 0 healthy, 1 problems found, "
                    "2 unusable input.",
    )
    doctor.add_argument("path", metavar="PATH", help="an encoder .param, or a directory with encoder/decoder/joiner "
                                                     ".param files and tokens.txt")
    doctor.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")
    doctor.add_argument("--run", action="store_true",
                        help="also run each net in ncnn (in child processes); a crash names the first layer that "
                             "crashes, found by running the graph layer by layer")
    from tui.cli.detect import add_detect_parsers
    add_detect_parsers(sub)
    from tui.cli.rewrite import add_rewrite_parser
    add_rewrite_parser(sub)
    run = sub.add_parser(
        "run", allow_abbrev=False,
        help="run the whole pipeline: export, pnnx, metadata, validation",
        description="Export -> pnnx -> SherpaMetaData -> validate -> summary, for a wizard.toml or a bundled demo. "
                    "Writes OUT/{encoder,decoder,joiner}_jit_trace-pnnx.ncnn.{param,bin}, tokens.txt, logs/, "
                    "manifest.json, run-state.json, export.sh and wizard.toml. Ctrl-C cancels the running step.",
        epilog=EXIT_CODES_HELP,
    )
    source = run.add_mutually_exclusive_group(required=True)
    source.add_argument("--config", metavar="F", help="a wizard.toml")
    source.add_argument("--demo", metavar="ARCH", choices=sorted(ARCHITECTURES),
                        help="run on a bundled demo recipe (" + ", ".join(sorted(ARCHITECTURES)) + ")")
    run.add_argument("--out", metavar="DIR", help="output directory (default: the config's, or runs/demo-ARCH)")
    run.add_argument("--int8", action="store_true", help="also produce an int8 model")
    run.add_argument("--int8-backend", choices=("builtin", "external", "auto"),
                     help="who calibrates and quantizes: the built-in code (default), your "
                          "generate-int8-scale-table / ncnn2int8 (external: each one found; auto: the same, "
                          "built in where not found)")
    run.add_argument("--resample", action="store_true",
                     help="with --int8: resample calibration wavs that are not 16 kHz (otherwise they are refused)")
    run.add_argument("--min-cosine", type=float, metavar="C",
                     help="with --int8: keep the most int8-sensitive layers float until the encoder's and the "
                          "joiner's output cosine reaches C (e.g. 0.99); same as [calibration] min_cosine")
    run.add_argument("--histogram", choices=("one-pass", "two-pass"),
                     help="with --int8: activation histograms in one pass (default) or two, as ncnn's tools take "
                          "them; same as [calibration] histogram")
    run.add_argument("--table-tool", metavar="PATH", help="sherpa-ncnn's generate-int8-scale-table binary")
    run.add_argument("--ncnn2int8", metavar="PATH", help="ncnn's ncnn2int8 binary")
    run.add_argument("--dry-run", action="store_true", help="print the plan (every command) and run nothing")
    run.add_argument("--resume", action="store_true", help="skip steps whose inputs and outputs are unchanged")
    run.add_argument("--script", metavar="F", help="also write the plan as a runnable bash script to F")
    run.add_argument("--python", metavar="PY", help="the Python that runs icefall's export (default: this one)")
    run.add_argument("--pnnx", metavar="PATH", help="use this pnnx binary instead of the wheel's")
    run.add_argument("--ignore-checkpoint-mismatch", action="store_true",
                     help="run even if the hyperparameters differ from what the checkpoint's weights show")
    run.add_argument("--trust-checkpoint", action="store_true",
                     help="let icefall's export unpickle a checkpoint the safe loader refused (it can run code: only "
                          "for files you trust; same as files.trust_checkpoint = true)")
    run.add_argument("--export-arg", action="append", default=[], metavar="ARG",
                     help="one more argument for icefall's export script, as it is (repeatable; write flags as "
                          "--export-arg=--lang-type --export-arg=char); appended to [export] extra_args")
    run.add_argument("--dataset", metavar="DIR",
                     help="also measure WER (fp16 and int8) on a dataset: LibriSpeech layout, Kaldi (wav.scp + text) "
                          "or a list file of AUDIO<TAB>TRANSCRIPT; same as [validation] dataset")
    run.add_argument("--max-wer-increase", type=float, metavar="POINTS",
                     help="with --dataset and --int8: fail when int8's WER is more than POINTS above fp16's "
                          "(e.g. 0.5); same as [validation] max_wer_increase")
    run.add_argument("--package", action="store_true",
                     help="also write OUT.tar.bz2: the model, tokens.txt, test_wavs/, README.md and bench.py in one "
                          "directory, like sherpa-ncnn's published model archives")
    from tui.cli.from_ncnn import add_from_ncnn_arguments
    add_from_ncnn_arguments(run, source)

    tui = sub.add_parser(
        "tui", allow_abbrev=False,
        help="the guided wizard (Textual); also what the bare command opens in a terminal",
        description="Open the wizard: demo or your model, files, architecture, hyperparameters, review, run, "
                    "summary. Nothing is written before the run starts.",
        epilog=EXIT_CODES_HELP,
    )
    tui_source = tui.add_mutually_exclusive_group()
    tui_source.add_argument("--config", metavar="F", help="open this wizard.toml (starts at Review)")
    tui_source.add_argument("--demo", metavar="ARCH", choices=sorted(ARCHITECTURES),
                            help="start on a bundled demo (" + ", ".join(sorted(ARCHITECTURES)) + ")")
    tui.add_argument("--out", metavar="DIR", help="output directory (default: the config's, or runs/demo-ARCH)")

    validate = sub.add_parser(
        "validate", allow_abbrev=False,
        help="check a model directory: torch vs ncnn outputs, and decoding in sherpa-ncnn",
        description="Compare the ncnn models with the traced torch modules (when --traced-dir has the "
                    "*_jit_trace-pnnx.pt files) and decode test wavs with the real sherpa-ncnn in a child process.",
        epilog=EXIT_CODES_HELP,
    )
    validate.add_argument("dir", metavar="DIR", help="directory with *_jit_trace-pnnx.ncnn.{param,bin} and tokens.txt")
    validate.add_argument("--arch", choices=sorted(ARCHITECTURES), help="default: read from the metadata")
    validate.add_argument("--traced-dir", metavar="D", help="where the *_jit_trace-pnnx.pt files are "
                                                            "(default: DIR/work/exp when present)")
    validate.add_argument("--wav", action="append", default=[], metavar="W", help="a 16 kHz test wav (repeatable)")
    validate.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")

    calibrate = sub.add_parser(
        "calibrate", allow_abbrev=False,
        help="int8 scale tables from calibration audio (built in; no generate-int8-scale-table needed)",
        description="Stream 16 kHz wavs through the fp32 model in DIR (encoder with SherpaMetaData; pnnx fp16=0) "
                    "as sherpa-ncnn does and write encoder-scale-table.txt and joiner-scale-table.txt in ncnn's "
                    "format. Statistics per file are cached, so a rerun skips finished files.",
        epilog=EXIT_CODES_HELP,
    )
    calibrate.add_argument("dir", metavar="DIR", help="directory with the fp32 *_jit_trace-pnnx.ncnn.{param,bin}")
    calibrate.add_argument("--wav", action="append", default=[], metavar="W", help="a calibration wav (repeatable)")
    calibrate.add_argument("--wav-list", metavar="F", help="a file with one wav path per line")
    calibrate.add_argument("--out", metavar="D", help="where the tables go (default: DIR)")
    calibrate.add_argument("--histogram", choices=("one-pass", "two-pass"),
                           help="activation histograms in one pass (default) or two (ncnn's: absmax first, then "
                                "exactly 2048 bins over [0, absmax])")
    calibrate.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")

    quantize = sub.add_parser(
        "quantize", allow_abbrev=False,
        help="write an int8 param/bin from a scale table (built in; like ncnn2int8)",
        description="Quantize the Convolution and InnerProduct layers the table names, and Gemm, LSTM and Embed "
                    "weights (weight-only int8, no table lines needed); other float weights become fp16, raw fp32 "
                    "data is copied as it is, and the result is re-read to the last byte before it is written.",
        epilog=EXIT_CODES_HELP,
    )
    for name in ("param", "bin", "out_param", "out_bin", "table"):
        quantize.add_argument(name, metavar=name.upper())
    quantize.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")
    from tui.cli.ship import add_ship_parsers
    add_ship_parsers(sub)
    return parser


def _known_flags(parser: argparse.ArgumentParser, command: str | None) -> list[str]:
    flags = [o for a in parser._actions for o in a.option_strings]  # noqa: SLF001 - argparse has no public API
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction) and command in action.choices:  # noqa: SLF001
            flags += [o for a in action.choices[command]._actions for o in a.option_strings]  # noqa: SLF001
    return [f for f in flags if f.startswith("--")]


def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except OSError as exc:  # a path the system refuses (too long, a loop of links, ...): a sentence, not a traceback
        name = str(exc.filename or "")
        name = name if len(name) <= 120 else name[:60] + "…" + name[-40:]
        print(f"error: {name}: {exc.strerror or exc}; check the path", file=sys.stderr)
        return EXIT_BAD_INPUT


def _main(argv: list[str] | None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:
        from tui.cli.common import unknown_flags_message
        parser.exit(EXIT_BAD_INPUT, unknown_flags_message(extras, _known_flags(parser, args.command)) + "\n")
    if args.command == "meta":
        from tui.cli.meta import run_meta
        return run_meta(args)
    if args.command == "rewrite":
        from tui.cli.rewrite import run_rewrite_cmd
        return run_rewrite_cmd(args)
    if args.command == "doctor":
        from tui.cli.doctor import run_doctor
        return run_doctor(args)
    if args.command in ("detect", "presets"):
        from tui.cli.detect import run_detect, run_presets
        return run_detect(args) if args.command == "detect" else run_presets(args)
    if args.command == "run" and getattr(args, "from_ncnn", None):
        from tui.cli.from_ncnn import run_from_ncnn
        return run_from_ncnn(args)
    if args.command == "run":
        from tui.cli.run import run_pipeline
        return run_pipeline(args)
    if args.command == "validate":
        from tui.cli.validate import run_validate
        return run_validate(args)
    if args.command in ("calibrate", "quantize"):
        from tui.cli.int8 import run_calibrate, run_quantize
        return run_calibrate(args) if args.command == "calibrate" else run_quantize(args)
    if args.command in ("bench", "hotwords"):
        from tui.cli.ship import run_bench, run_hotwords
        return run_bench(args) if args.command == "bench" else run_hotwords(args)
    if args.command == "tui" or (args.command is None and sys.stdin.isatty() and sys.stdout.isatty()):
        from tui.wizard.app import run_tui  # textual is imported only here, so --help stays fast
        return run_tui(args)
    parser.print_help()
    return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
