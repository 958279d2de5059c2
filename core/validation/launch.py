"""Start the validation child process (torch, ncnn and, further down, sherpa-ncnn never load in the caller).

The front-ends call this instead of starting processes themselves; every path is made absolute first, because
the child runs from the package's directory.
"""
from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ValidationRun:
    returncode: int
    output: str  # the child's stdout+stderr when captured, else ""
    json_path: Path


def run_validation(out: Path, traced: Path, wavs: list[str | Path], json_out: Path, *, arch: str | None = None,
                   capture: bool = False) -> ValidationRun:
    argv = [sys.executable, "-m", "core.validation.validate", str(Path(out).resolve()), "--traced-dir",
            str(Path(traced).resolve()), "--json-out", str(Path(json_out).resolve())]
    if arch:
        argv += ["--arch", arch]
    for w in wavs:
        argv += ["--wav", str(Path(w).expanduser().resolve())]
    proc = subprocess.run(argv, capture_output=capture, text=True, cwd=str(PACKAGE_ROOT))
    output = (proc.stdout or "") + (proc.stderr or "") if capture else ""
    return ValidationRun(proc.returncode, output, Path(json_out))
