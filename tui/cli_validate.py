"""`sherpa-ncnn-wizard validate`: numeric and runtime checks on an existing model directory."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from .cli import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK
from .cli_common import emit_json, stderr_console


def run_validate(args) -> int:
    out = Path(args.dir)
    if not (out / "encoder_jit_trace-pnnx.ncnn.param").exists():
        stderr_console().print(f"error: {out}: no encoder_jit_trace-pnnx.ncnn.param here")
        return EXIT_BAD_INPUT
    traced = Path(args.traced_dir) if args.traced_dir else out / "work" / "exp"
    json_out = out / "validation.json"
    argv = [sys.executable, "-m", "core.validate", str(out), "--traced-dir", str(traced), "--json-out", str(json_out)]
    if args.arch:
        argv += ["--arch", args.arch]
    for w in args.wav:
        argv += ["--wav", w]
    # torch and ncnn load in a child process: this command stays light, and a crash cannot take it down
    proc = subprocess.run(argv, capture_output=args.json, text=True,
                          cwd=str(Path(__file__).resolve().parents[1]))
    if args.json:
        report = json.loads(json_out.read_text()) if json_out.exists() else {"ok": False, "error": proc.stdout}
        emit_json(report)
    return EXIT_OK if proc.returncode == 0 else EXIT_FAILED
