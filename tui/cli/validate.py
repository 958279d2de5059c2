"""`sherpa-ncnn-wizard validate`: numeric and runtime checks on an existing model directory."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from tui.cli.common import emit_json, stderr_console
from tui.cli.exit_codes import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK

def _usage_problems(args, out: Path) -> list[str]:
    from core.model.architectures import BY_MODEL_TYPE
    from core.model.metadata import read_metadata
    from core.ncnn.param import load_param

    problems = []
    encoder = out / "encoder_jit_trace-pnnx.ncnn.param"
    if not encoder.is_file():
        return [f"{out}: no encoder_jit_trace-pnnx.ncnn.param here"]
    for w in args.wav:
        if not Path(w).expanduser().is_file():
            problems.append(f"--wav {w}: not found (relative paths are taken from {Path.cwd()})")
    if args.traced_dir and not Path(args.traced_dir).expanduser().is_dir():
        problems.append(f"--traced-dir {args.traced_dir}: not a directory")
    if args.arch:
        parsed = load_param(encoder)
        meta = read_metadata(parsed.model) if parsed.model is not None else None
        spec = BY_MODEL_TYPE.get(meta.get(0)) if meta else None
        found = spec.name if spec else None
        if found and found != args.arch:
            problems.append(f"--arch {args.arch}: the encoder's SherpaMetaData says {found} (0={meta.get(0)}); "
                            "drop --arch (the metadata decides) or fix the metadata")
    return problems


def run_validate(args) -> int:
    from core.validation.launch import run_validation

    out = Path(args.dir).expanduser()
    problems = _usage_problems(args, out)
    if problems:
        if args.json:
            emit_json({"ok": False, "errors": problems})
        for p in problems:
            stderr_console().print(f"error: {p}")
        return EXIT_BAD_INPUT
    traced = Path(args.traced_dir).expanduser() if args.traced_dir else out / "work" / "exp"
    json_out = out / "validation.json"
    if not os.access(out, os.W_OK):  # a read-only model directory is validated all the same
        json_out = Path(tempfile.mkdtemp(prefix="sherpa-ncnn-wizard-")) / "validation.json"
        stderr_console().print(f"note: {out} is read-only; the report goes to {json_out}")
    result = run_validation(out, traced, args.wav, json_out, arch=args.arch, capture=args.json)
    if args.json:
        from core.validation.report import read_validation
        report = read_validation(json_out.parent, json_out.name)
        emit_json(report.raw if report.readable else {"ok": False, "error": report.problem or result.output})
    return EXIT_OK if result.returncode == 0 else EXIT_FAILED
