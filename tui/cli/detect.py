"""`sherpa-ncnn-wizard detect` and `presets`: what a checkpoint is, and the published models' flags."""
from __future__ import annotations

from tui.cli.exit_codes import EXIT_BAD_INPUT, EXIT_OK

SOURCE_STYLE = {"weights": "green", "training params": "cyan", "default": "yellow"}


def add_detect_parsers(sub) -> None:
    detect_p = sub.add_parser(
        "detect", allow_abbrev=False,
        help="detect the architecture and hyperparameters of an icefall checkpoint",
        description="Read a pretrained.pt / epoch-N.pt / checkpoint-N.pt without running code from it, detect "
                    "the architecture from the state-dict keys and every hyperparameter the weights (or the "
                    "training params stored in epoch/checkpoint files) reveal, and print the icefall flags to "
                    "use. Values the weights cannot reveal are marked as defaults. Exit 0 ok, 2 unusable input "
                    "(missing file, refused pickle, unknown or unsupported architecture).",
    )
    detect_p.add_argument("checkpoint", metavar="CHECKPOINT", help="pretrained.pt, epoch-N.pt or checkpoint-N.pt")
    fmt = detect_p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")
    fmt.add_argument("--toml", action="store_true", help="print a wizard.toml fragment (arch and [hyperparameters])")
    detect_p.add_argument("--trust", action="store_true",
                          help="load a checkpoint that needs more than plain types (unpickling CAN RUN CODE from "
                               "the file: only for files you trust)")
    presets_p = sub.add_parser("presets", allow_abbrev=False, help="list presets of published models",
                               description="The exact export flags of published icefall models, with their sources.")
    presets_p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")


def run_detect(args) -> int:
    from rich.table import Table
    from rich.text import Text

    from core.model.checkpoint import CheckpointError, UnsafeCheckpointError, UnsupportedArchitectureError, detect
    from tui.cli.common import emit_json, stderr_console, stdout_console
    try:
        det = detect(args.checkpoint, trust=args.trust)
    except CheckpointError as exc:
        kind = ("refused" if isinstance(exc, UnsafeCheckpointError)
                else "unsupported" if isinstance(exc, UnsupportedArchitectureError) else "unusable")
        if args.json:
            payload = {"path": args.checkpoint, "usable": False, "reason": kind, "error": str(exc)}
            if isinstance(exc, UnsafeCheckpointError):
                payload["types"] = exc.types
            emit_json(payload)
        else:
            stderr_console().print(Text("error: ", style="bold red") + Text(str(exc)))
        return EXIT_BAD_INPUT
    from core.model.presets import matching_presets
    presets = [p.name for p in matching_presets(det)]
    if args.json:
        emit_json(det.to_dict() | {"usable": True, "matching_presets": presets})
        return EXIT_OK
    if args.toml:
        print(det.to_toml(), end="")
        return EXIT_OK
    out = stdout_console()
    out.print(Text(f"detect: {det.path}", style="bold"))
    out.print(f"architecture: {det.arch.title} ({det.arch.name}, {det.arch.recipe})")
    out.print(f"checkpoint kind: {det.kind}" + (" (loaded with --trust)" if det.trusted else ""))
    table = Table(show_header=True, header_style="bold", box=None)
    table.add_column("flag")
    table.add_column("value")
    table.add_column("source")
    for d in det.values.values():
        table.add_row(d.flag, d.text, Text(d.source + (f" ({d.note})" if d.note else ""),
                                           style=SOURCE_STYLE.get(d.source, "")))
    out.print(table)
    if det.extras:
        out.print("also: " + ", ".join(f"{k} {','.join(map(str, v)) if isinstance(v, tuple) else v}"
                                       for k, v in det.extras.items()))
    for msg in det.disagreements:
        out.print(Text("[✗] ", style="red") + Text(msg))
    for msg in det.warnings:
        out.print(Text("[!] ", style="yellow") + Text(msg))
    for name in presets:
        out.print(Text("matches the published model ", style="green") + Text(name, style="bold green")
                  + Text(" (see `presets` for its exact export flags)"))
    out.print(Text("flags for export-for-ncnn.py / meta:", style="bold"))
    out.print(det.flags_text(), soft_wrap=True, highlight=False, markup=False)
    return EXIT_OK


def run_presets(args) -> int:
    from rich.text import Text

    from core.model.presets import PRESETS
    from tui.cli.common import emit_json, stdout_console
    if args.json:
        emit_json({"presets": [p.to_dict() for p in PRESETS.values()]})
        return EXIT_OK
    out = stdout_console()
    for p in PRESETS.values():
        out.print(Text(p.name, style="bold") + Text(f"  ({p.arch})"))
        out.print(f"  {p.description}", highlight=False)
        out.print("  " + " ".join(f'{k} "{v}"' if "," in v else f"{k} {v}" for k, v in p.flags.items()),
                  soft_wrap=True, highlight=False, markup=False)
        out.print(f"  source: {p.source}", highlight=False)
    return EXIT_OK
