"""Recent runs, so the wizard's Start screen can reopen them.

A small JSON list in the user's state directory ($XDG_STATE_HOME or
~/.local/state, overridable with SHERPA_NCNN_WIZARD_STATE); newest first, one
entry per output directory. Losing or corrupting it loses nothing else.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

LIMIT = 8


def state_file() -> Path:
    base = os.environ.get("SHERPA_NCNN_WIZARD_STATE")
    if base:
        return Path(base) / "recent.json"
    root = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(root) / "sherpa-ncnn-wizard" / "recent.json"


def recent_runs() -> list[dict]:
    """Entries whose output directory still holds a wizard.toml."""
    try:
        entries = json.loads(state_file().read_text())
    except (OSError, ValueError):
        return []
    if not isinstance(entries, list):
        return []
    return [e for e in entries if isinstance(e, dict) and Path(str(e.get("out", ""))).joinpath("wizard.toml").exists()]


def record_run(out_dir: str | Path, arch: str, status: str) -> None:
    """Remember a run (best effort: a read-only home must never break a run)."""
    out = str(Path(out_dir).resolve())
    entries = [e for e in recent_runs() if e.get("out") != out]
    entries.insert(0, {"out": out, "arch": arch, "status": status, "time": time.strftime("%Y-%m-%d %H:%M")})
    try:
        path = state_file()
        path.parent.mkdir(parents=True, exist_ok=True)
        from core.common.atomic import atomic_write_bytes
        atomic_write_bytes(path, json.dumps(entries[:LIMIT], indent=2).encode())
    except (OSError, Exception):  # noqa: BLE001 - best effort by design
        pass
