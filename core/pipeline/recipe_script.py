"""What an icefall export script accepts, read from its source (never run: running it needs icefall's environment).

icefall's ``export-for-ncnn.py`` scripts build their parser from literal ``add_argument("--flag", ...)`` calls in
the script and in helpers it imports from its own folder and calls with the parser (``add_model_arguments(parser)``
from train.py / do_not_use_it_directly.py, CSJ's ``Tokenizer.add_arguments(parser)`` from tokenizer.py). Python
resolves those imports in the folder of the script's real file (a recipe whose script is a link to another
recipe's runs that recipe's code), so that is the folder read here.

How the vocabulary is passed differs by recipe and icefall version: ``--tokens tokens.txt`` (since 2023-08),
``--bpe-model bpe.model`` (older), ``--lang DIR [--lang-type char|bpe]`` (CSJ).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

_FLAG = re.compile(r"""add_argument\(\s*["'](--[A-Za-z0-9][\w-]*)["']""")
_IMPORT = re.compile(r"^from[ \t]+(\w+)[ \t]+import[ \t]+(?:\(([^)]*)\)|([^\n#]+))", re.M)

TOKEN_FLAGS = ("--tokens", "--bpe-model", "--lang")


@dataclass
class ScriptArgs:
    """The flags a script's parser gets, and how it takes the vocabulary."""

    script: Path
    flags: set[str] = field(default_factory=set)
    read: list[Path] = field(default_factory=list)  # the files the flags were read from

    @property
    def token_flag(self) -> str:
        """``--tokens``, ``--bpe-model`` or ``--lang`` (``--tokens`` when the script names none of them)."""
        for flag in TOKEN_FLAGS:
            if flag in self.flags:
                return flag
        return "--tokens"

    @property
    def complete(self) -> bool:
        """True when the reading found the parser's usual core (so a flag not found is really not accepted)."""
        return {"--exp-dir", "--epoch", "--avg"} <= self.flags

    def accepts(self, flag: str) -> bool:
        return flag in self.flags or not self.complete


def _text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _function_body(text: str, name: str, owner: str | None) -> str:
    """The source of ``def name`` (inside ``class owner`` when given), up to the next line indented as little."""
    start = 0
    if owner:
        m = re.search(rf"^\s*class\s+{re.escape(owner)}\b", text, re.M)
        if not m:
            return ""
        start = m.end()
    m = re.compile(rf"^([ \t]*)def\s+{re.escape(name)}\s*\(", re.M).search(text, start)
    if not m:
        return ""
    indent = len(m.group(1))
    lines = text[m.end():].splitlines()
    body = []
    for line in lines[1:]:
        if line.strip() and len(line) - len(line.lstrip()) <= indent:
            break
        body.append(line)
    return lines[0] + "\n" + "\n".join(body) if lines else ""


def read_script_args(script: Path) -> ScriptArgs:
    """The flags ``script`` accepts: its own add_argument calls and those of the helpers it calls with the parser."""
    out = ScriptArgs(script)
    text = _text(script)
    if not text:
        return out
    out.read.append(script)
    out.flags |= set(_FLAG.findall(text))
    folder = script.resolve().parent
    for module, grouped, plain in _IMPORT.findall(text):
        names = grouped or plain
        source = folder / f"{module}.py"
        for name in (n.strip() for n in names.split(",")):
            if not name:
                continue
            call = re.search(rf"\b{re.escape(name)}(?:\.(\w+))?\(\s*parser\b", text)
            if not call or not source.is_file():
                continue
            body = _function_body(_text(source), call.group(1) or name, name if call.group(1) else None)
            found = set(_FLAG.findall(body))
            if found:
                out.flags |= found
                out.read.append(source)
    return out
