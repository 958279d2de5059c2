"""Small helpers the CLI commands share: JSON output, consoles, flag suggestions."""
from __future__ import annotations

import difflib
import json
import sys

from rich.console import Console


def stdout_console() -> Console:
    return Console(highlight=False, soft_wrap=True)


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False, soft_wrap=True)


def emit_json(obj: dict) -> None:
    """One JSON object on stdout and nothing else."""
    sys.stdout.write(json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def unknown_flags_message(extras: list[str], known_flags: list[str]) -> str:
    """Name each unknown flag, with the closest known one; a flag's value is not reported on its own."""
    parts = []
    previous_was_flag = False
    for extra in extras:
        if extra.startswith("-"):
            flag = extra.split("=", 1)[0]
            close = difflib.get_close_matches(flag, known_flags, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            parts.append(f"unknown flag {flag}{hint}")
            previous_was_flag = "=" not in extra
        elif previous_was_flag:
            previous_was_flag = False  # the unknown flag's value
        else:
            parts.append(f"unexpected argument {extra!r}")
    return "sherpa-ncnn-wizard: error: " + "; ".join(parts) + ". See --help."
