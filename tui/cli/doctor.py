"""`sherpa-ncnn-wizard doctor`: diagnose an existing model."""
from __future__ import annotations

from rich.text import Text

from core.validation.doctor import UnusableInput, diagnose
from tui.cli.common import emit_json, stderr_console, stdout_console
from tui.cli.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK

MARKS = {"ok": ("[✓] ", "green"), "warning": ("[!] ", "yellow"), "error": ("[✗] ", "red")}


def run_doctor(args) -> int:
    try:
        report = diagnose(args.path, run=getattr(args, "run", False))
    except UnusableInput as exc:
        if args.json:
            emit_json({"path": args.path, "healthy": False, "usable": False, "error": str(exc)})
        else:
            stderr_console().print(Text("error: ", style="bold red") + Text(str(exc)))
        return EXIT_BAD_INPUT
    if args.json:
        emit_json(report.as_dict() | {"usable": True})
    else:
        out = stdout_console()
        out.print(Text(f"doctor: {report.path}", style="bold"))
        if report.arch:
            out.print(f"architecture: {report.arch}" + ("" if report.metadata is not None else " (guessed from the graph)"))
        for f in report.findings:
            mark, style = MARKS[f.severity]
            out.print(Text(mark, style=style) + Text(str(f)))
        verdict = "healthy" if report.healthy else \
            f"{sum(f.severity == 'error' for f in report.findings)} problem(s) found"
        out.print(Text(verdict, style="bold green" if report.healthy else "bold red"))
    return EXIT_OK if report.healthy else EXIT_FAILED
