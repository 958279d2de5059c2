"""Which external tools a run uses: the pnnx binary (and which ones are on PATH)."""
from __future__ import annotations

import importlib.util
import os
import shutil
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

# Wheel versions that must not be used, and why (shared/fixtures/icefall-real/README.md).
KNOWN_BAD_PNNX = {
    "20261020": "segfaults (exit 139 after pass_ncnn) on real icefall LSTM and ConvEmformer encoders; "
                "install pnnx==20260526 (./dev.sh does)",
}


@dataclass
class PnnxInfo:
    path: Path | None
    version: str | None
    source: str  # "wheel" or "user"
    on_path: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"path": str(self.path) if self.path else None, "version": self.version, "source": self.source,
                "on_path": self.on_path}


def pnnx_on_path() -> list[str]:
    found = []
    for d in os.environ.get("PATH", "").split(os.pathsep):
        candidate = Path(d or ".") / "pnnx"
        if candidate.is_file() and os.access(candidate, os.X_OK) and str(candidate.resolve()) not in found:
            found.append(str(candidate.resolve()))
    return found


def wheel_pnnx() -> tuple[Path | None, str | None]:
    """The converter binary inside the pnnx wheel, found without importing pnnx (that imports torch)."""
    spec = importlib.util.find_spec("pnnx")
    if spec is None or not spec.submodule_search_locations:
        return None, None
    binary = Path(list(spec.submodule_search_locations)[0]) / "pnnx"
    try:
        version = metadata.version("pnnx")
    except metadata.PackageNotFoundError:
        version = None
    return (binary if binary.is_file() else None), version


def find_pnnx(user_path: str | None = None) -> PnnxInfo:
    on_path = pnnx_on_path()
    if user_path:
        resolved = shutil.which(user_path) or user_path
        p = Path(resolved).expanduser()
        info = PnnxInfo(p, None, "user", on_path)
        if not p.is_file():
            info.problems.append(f"{user_path} not found")
        elif not os.access(p, os.X_OK):
            info.problems.append(f"{p} is not executable")
        else:
            info.warnings.append(f"using your own pnnx at {p} (version unknown); the wheel's is not used")
        return info
    binary, version = wheel_pnnx()
    info = PnnxInfo(binary, version, "wheel", on_path)
    if binary is None:
        info.problems.append("the pnnx wheel is not installed (pip install pnnx==20260526), or set tools.pnnx "
                             "to a pnnx binary")
    elif version in KNOWN_BAD_PNNX:
        info.problems.append(f"pnnx {version} {KNOWN_BAD_PNNX[version]}")
    if len(on_path) > 1:
        info.warnings.append(f"several pnnx on PATH ({', '.join(on_path)}); the wizard uses "
                             f"{binary or user_path} by its full path")
    return info
