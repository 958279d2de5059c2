"""Small helpers the CLI commands share: JSON output, consoles, flag suggestions."""
from __future__ import annotations

import difflib
import json
import shlex
import sys
from pathlib import Path

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


NETS = ("encoder", "decoder", "joiner")


def recognizer_call(out_dir: Path, int8: bool = False, name: str = "recognizer") -> list[str]:
    """``name = sherpa_ncnn.Recognizer(...)`` for OUT's fp16 files, or its int8 set (int8 encoder and joiner)."""
    lines = [f"{name} = sherpa_ncnn.Recognizer(", f"    tokens={str(Path(out_dir) / 'tokens.txt')!r},"]
    for net in NETS:
        q = ".int8" if int8 and net != "decoder" else ""
        for ext in ("param", "bin"):
            lines.append(f"    {net}_{ext}={str(Path(out_dir) / f'{net}_jit_trace-pnnx.ncnn{q}.{ext}')!r},")
    return lines + ["    num_threads=2,", ")"]


def has_int8(out_dir: Path) -> bool:
    return (Path(out_dir) / "encoder_jit_trace-pnnx.ncnn.int8.param").is_file()


def sherpa_snippet(out_dir: Path) -> str:
    """How to load OUT's model in sherpa-ncnn's Python API; the int8 set too (encoder and joiner) when it is
    there, so a user of the int8 model does not load the fp16 files by mistake."""
    text = ["import sherpa_ncnn", "", *recognizer_call(out_dir)]
    if has_int8(out_dir):
        text += ["", "# the int8 set: int8 encoder and joiner, the fp16 decoder",
                 *recognizer_call(out_dir, int8=True, name="recognizer_int8")]
    return "\n".join(text)


def next_steps(out_dir: Path) -> list[str]:
    """What to do after a finished run: load the model, check the install, try your own audio, reopen it."""
    out = shlex.quote(str(out_dir))
    int8 = has_int8(out_dir)
    readme = Path(out_dir) / "README.md"
    lines = ["next steps:", "  load it in sherpa-ncnn (Python: pip install sherpa-ncnn)"
             + (", the int8 set:" if int8 else ":"), "    import sherpa_ncnn",
             *("    " + line for line in recognizer_call(out_dir, int8=int8))]
    if int8:
        lines.append("    # the fp16 set: the same names without .int8")
    if readme.is_file():
        lines.append(f"    # C++, Android and the rest: {shlex.quote(str(readme))}")
    return lines + ["  check this machine:    sherpa-ncnn-wizard doctor",
                    f"  decode your own wavs:  sherpa-ncnn-wizard validate {out} --wav your.wav",
                    "  open it in the wizard: sherpa-ncnn-wizard tui --config "
                    + shlex.quote(str(Path(out_dir) / "wizard.toml"))]
