"""`sherpa-ncnn-wizard meta`: preview and apply the SherpaMetaData edit."""
from __future__ import annotations

from rich.table import Table
from rich.text import Text

from core.model.architectures import ARCHITECTURES, resolve
from core.model.metadata import ApplyError, apply_plan, build_metadata, plan_metadata
from core.ncnn.param import load_param
from tui.cli.common import emit_json, stdout_console
from tui.cli.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK


def run_meta(args) -> int:
    spec = ARCHITECTURES[args.arch]
    own_flags = {hp.flag for hp in spec.hyperparams}
    given, notes = {}, []
    for key, value in vars(args).items():
        if value is None:
            continue
        if key.startswith("hp:"):
            flag = key[3:]
            if flag in own_flags:
                given[flag] = value
            else:
                notes.append(f"{flag} is not a {spec.title} flag; ignored")
        elif key.startswith("ignored:"):
            notes.append(f"{key[8:]} is an export option, not a model hyperparameter; ignored here")
    result = {"arch": spec.name, "param": args.param, "line": None, "header_before": None, "header_after": None,
              "action": None, "line_no": None, "entries": [], "values": {}, "defaults": [], "diff": "",
              "checks": [], "warnings": list(notes), "errors": [], "applied": False, "backup": None}
    resolved = resolve(spec, given)
    result["values"] = {spec.param(n).flag: {"value": spec.param(n).format(v), "source": resolved.sources[n]}
                        for n, v in resolved.values.items()}
    result["defaults"] = resolved.defaulted_flags()
    result["warnings"] += [p.message for p in resolved.warnings]
    if not resolved.ok:
        result["errors"] += [p.message for p in resolved.errors]
        return _finish(args, result, EXIT_BAD_INPUT, spec)
    metadata = build_metadata(resolved)
    result["line"] = metadata.line
    result["entries"] = [{"key": e.key, "text": e.text, "value": list(e.value) if isinstance(e.value, tuple) else e.value,
                          "source": e.source} for e in metadata.entries]
    if not args.apply:
        return _plan_and_apply(args, result, metadata, resolved, spec)
    from core.common.locks import LockError, edit_lock
    try:  # read, plan and write under one lock: a concurrent --apply waits, then sees this one's result
        with edit_lock(args.param):
            return _plan_and_apply(args, result, metadata, resolved, spec)
    except LockError as exc:
        result["errors"].append(str(exc))
        return _finish(args, result, EXIT_FAILED, spec)


def _plan_and_apply(args, result: dict, metadata, resolved, spec) -> int:
    parsed = load_param(args.param)
    if parsed.model is None:
        result["errors"] += [f"{args.param}: {i}" for i in parsed.issues]
        return _finish(args, result, EXIT_BAD_INPUT, spec)
    plan = plan_metadata(parsed.model, metadata, resolved.values)
    result.update({k: v for k, v in plan.as_dict().items() if k in ("header_before", "header_after", "action",
                                                                      "line_no", "diff", "checks")})
    result["warnings"] += plan.warnings
    result["errors"] += plan.errors
    if plan.errors:
        code = EXIT_BAD_INPUT if parsed.model.errors else EXIT_FAILED
        return _finish(args, result, code, spec)
    if args.apply:
        try:
            applied = apply_plan(plan, args.param, force=getattr(args, "force", False))
        except ApplyError as exc:
            result["errors"].append(str(exc))
            return _finish(args, result, EXIT_FAILED, spec)
        result["applied"] = applied.applied
        result["backup"] = applied.backup
        result["message"] = applied.message
    return _finish(args, result, EXIT_OK, spec)


def _finish(args, result: dict, code: int, spec) -> int:
    if args.json:
        emit_json(result)
    else:
        _render(result, spec, args.apply)
    return code


def _render(r: dict, spec, apply: bool) -> None:
    out = stdout_console()
    out.print(Text(f"SherpaMetaData for {spec.title} ({spec.name}) -> {r['param']}", style="bold"))
    if r["entries"]:
        table = Table(show_edge=False, pad_edge=False)
        table.add_column("key")
        table.add_column("written")
        table.add_column("from")
        defaults = set(r["defaults"])
        for e in r["entries"]:
            src = e["source"]
            if src in defaults:
                src += " (icefall default)"
            table.add_row(str(e["key"]), e["text"], src)
        out.print(table)
    if r["defaults"]:
        out.print(f"defaults used (not given on the command line): {', '.join(r['defaults'])}")
    if r["line"]:
        out.print(Text("line:   ", style="bold") + Text(r["line"]))
    if r["header_before"] is not None:
        change = "unchanged" if r["header_before"] == r["header_after"] else f"{r['header_before']} -> {r['header_after']}"
        out.print(Text("header: ", style="bold") + Text(change))
    if r["diff"]:
        for line in r["diff"].splitlines():
            style = "green" if line.startswith("+") and not line.startswith("+++") else \
                "red" if line.startswith("-") and not line.startswith("---") else "dim"
            out.print(Text(line, style=style))
    for c in r["checks"]:
        mark = Text("[✓] ", style="green") if c["ok"] else Text("[✗] ", style="red")
        out.print(mark + Text(c["message"]))
    for w in r["warnings"]:
        out.print(Text("warning: ", style="yellow") + Text(w))
    for e in r["errors"]:
        out.print(Text("error: ", style="bold red") + Text(e))
    if r["errors"]:
        return
    if r["action"] == "unchanged":
        out.print("The metadata is already in the file; nothing to change.")
    elif r["applied"]:
        out.print(Text(r.get("message", "written"), style="green"))
        if r["backup"]:
            out.print(f"original kept as {r['backup']}")
    elif not apply:
        out.print("Nothing was written. Add --apply to write it (the original is kept as PARAM.orig).")
