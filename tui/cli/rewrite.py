"""`sherpa-ncnn-wizard rewrite PARAM`: preview (and with --apply write) the graph rewrites of an encoder."""
from __future__ import annotations

import argparse

from core.model.architectures import ARCHITECTURES


class _ListsRules(argparse.HelpFormatter):
    """Lists the rewrite registry's rules under the help; the registry is imported only when help is printed."""

    def add_text(self, text):
        if text is not _RULES:
            return super().add_text(text)
        from core.rewrite.registry import listing
        self.start_section("rewrites, in the order they run (name (phase; architectures): what it does)")
        for line in listing():
            super().add_text(line)
        self.end_section()


_RULES = "rewrite rules"  # the epilog's placeholder, filled from the registry by _ListsRules


def add_rewrite_parser(sub) -> None:
    p = sub.add_parser(
        "rewrite", allow_abbrev=False, formatter_class=_ListsRules, epilog=_RULES,
        help="preview (and with --apply write) rewrites of layers sherpa-ncnn's runtime lacks",
        description="Replace layers the pnnx wheel leaves in icefall encoders that sherpa-ncnn cannot run "
                    "(e.g. LSTM's Tensor.to on the lengths output, its traced time length) with equivalent "
                    "layers. A layer no rewrite recognises is refused with its name and type, and nothing is "
                    "written. --apply writes atomically and keeps PARAM.orig (once).",
    )
    p.add_argument("param", metavar="PARAM", help="the encoder .ncnn.param written by pnnx")
    p.add_argument("--arch", choices=sorted(ARCHITECTURES), help="the model architecture (enables the "
                                                                  "LSTM chunk-length rewrite)")
    p.add_argument("--pnnx-param", metavar="F", help="pnnx's own graph (default: encoder.pnnx.param next to PARAM)")
    p.add_argument("--apply", action="store_true", help="write the rewrite (atomic, with .orig backups)")
    p.add_argument("--force", action="store_true", help="with --apply: also edit read-only files")
    p.add_argument("--json", action="store_true", help="print one JSON object on stdout and nothing else")


def run_rewrite_cmd(args: argparse.Namespace) -> int:
    from contextlib import nullcontext
    from pathlib import Path

    from rich.text import Text

    from core.common.locks import LockError, edit_lock
    from core.rewrite.driver import RewriteError, apply_rewrites, plan_file
    from tui.cli.common import emit_json, stderr_console, stdout_console
    from tui.cli.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK

    param = Path(args.param)
    if args.pnnx_param and not Path(args.pnnx_param).is_file():
        stderr_console().print(Text("error: ", style="bold red") + Text(
            f"--pnnx-param {args.pnnx_param}: not found; give pnnx's own graph of this model (the *.pnnx.param pnnx "
            "wrote beside the ncnn files), or leave the option out"))
        return EXIT_BAD_INPUT
    result = None
    error = None
    try:  # plan and write under one lock: a concurrent --apply waits, then plans from this one's result
        with edit_lock(param) if args.apply else nullcontext():
            plan = plan_file(param, pnnx_param=args.pnnx_param, arch=args.arch)
            if args.apply and plan.can_apply:
                binary = param.with_name(param.name[:-len(".param")] + ".bin") if param.name.endswith(".param") \
                    else None
                try:
                    result = apply_rewrites(plan, param, binary, force=args.force)
                except RewriteError as exc:
                    error = str(exc)
    except LockError as exc:
        stderr_console().print(Text("error: ", style="bold red") + Text(str(exc)))
        return EXIT_FAILED
    if args.json:
        emit_json(plan.as_dict() | {"applied": bool(result and result.applied),
                                    "backup": result.backup if result else None, "write_error": error})
    else:
        out = stdout_console()
        out.print(Text(f"rewrite: {param}", style="bold"))
        for c in plan.changes:
            out.print(Text("[✓] ", style="green") + Text(f"[{c.rule}] line {c.line}: {c.layer} ({c.type}): {c.what}"))
        for n in plan.notes:
            out.print(Text("note: ", style="yellow") + Text(n))
        if plan.diff:
            out.print(plan.diff, highlight=False, markup=False)
        for e in plan.errors:
            stderr_console().print(Text("[✗] ", style="red") + Text(e))
        out.print(Text(plan.summary(), style="bold"))
        if result is not None:
            out.print(f"written: {result.param} (backup {result.backup})")
        elif plan.can_apply and not args.apply:
            out.print("nothing written; add --apply to write it")
        if error:
            stderr_console().print(Text("error: ", style="bold red") + Text(error))
    if plan.action == "refused" and not plan.header_before:  # the file could not be read or parsed at all
        return EXIT_BAD_INPUT
    return EXIT_FAILED if plan.action == "refused" or error else EXIT_OK
