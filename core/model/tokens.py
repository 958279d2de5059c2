"""tokens.txt: read it the way sherpa-ncnn does, and say what would go wrong.

sherpa-ncnn reads ``symbol id`` pairs with ``is >> sym >> id`` and stops
silently at the first malformed pair; blank must be id 0 and id 2 is never
emitted (treated as blank). Making tokens.txt from bpe.model needs
sentencepiece, imported only when that is asked for.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

_ID_RE = re.compile(r"-?[0-9]{1,9}\Z")  # ASCII digits only ('1²' is a digit to str.isdigit), no '--5', no 5000 digits
MAX_TOKENS_BYTES = 64 << 20


@dataclass(frozen=True)
class TokenProblem:
    severity: str  # "error" or "warning"
    line: int | None
    message: str

    def __str__(self) -> str:
        return (f"line {self.line}: " if self.line else "") + self.message


@dataclass
class TokenTable:
    symbols: dict[int, str]
    problems: list[TokenProblem]

    @property
    def size(self) -> int:
        return len(self.symbols)


def read_tokens(path: str | Path) -> TokenTable:
    """Parse tokens.txt; problems are values with line numbers."""
    path = Path(path)
    problems: list[TokenProblem] = []
    try:
        if path.is_dir() or (path.exists() and not path.is_file()):
            return TokenTable({}, [TokenProblem("error", None, f"{path} is not a regular file")])
        if path.stat().st_size > MAX_TOKENS_BYTES:
            return TokenTable({}, [TokenProblem("error", None, f"{path} is {path.stat().st_size:,} bytes; a tokens.txt "
                                                              "is a few hundred KB at most")])
        text = path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        return TokenTable({}, [TokenProblem("error", None, f"{path} not found")])
    except UnicodeDecodeError as exc:
        return TokenTable({}, [TokenProblem("error", None, f"{path} is not UTF-8 text (offset {exc.start})")])
    except OSError as exc:
        return TokenTable({}, [TokenProblem("error", None, f"{path} cannot be read ({exc.strerror})")])
    symbols: dict[int, str] = {}
    seen_symbols: dict[str, int] = {}
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not _ID_RE.match(parts[1]):
            problems.append(TokenProblem("error", n, f"expected 'symbol id', found {line.strip()[:40]!r}; sherpa-ncnn "
                                                     "silently stops reading tokens.txt here"))
            break
        sym, tid = parts[0], int(parts[1])
        if tid in symbols:
            problems.append(TokenProblem("error", n, f"id {tid} is used twice ({symbols[tid]!r} and {sym!r})"))
            continue
        if sym in seen_symbols:
            problems.append(TokenProblem("warning", n, f"symbol {sym!r} appears twice (ids {seen_symbols[sym]} and {tid})"))
        symbols[tid] = sym
        seen_symbols.setdefault(sym, tid)
    if not symbols and not problems:
        problems.append(TokenProblem("error", None, "tokens.txt is empty"))
    if symbols:
        if 0 not in symbols:
            problems.append(TokenProblem("error", None, "no token has id 0; sherpa-ncnn uses id 0 as blank"))
        elif symbols[0] != "<blk>":
            blk = seen_symbols.get("<blk>")
            where = f" (<blk> has id {blk})" if blk is not None else ""
            problems.append(TokenProblem("error", None, f"id 0 is {symbols[0]!r}, not <blk>{where}; sherpa-ncnn "
                                                        "hard-codes blank = 0"))
        expected = set(range(len(symbols)))
        if set(symbols) != expected:
            gaps = sorted(expected - set(symbols))[:5]
            problems.append(TokenProblem("warning", None, f"ids are not contiguous from 0 (missing e.g. {gaps}); "
                                                          "a joiner output without a token crashes sherpa-ncnn"))
        if 2 in symbols and symbols[2] != "<unk>":
            problems.append(TokenProblem("warning", None, f"id 2 is {symbols[2]!r}; sherpa-ncnn never emits id 2 "
                                                          "(it treats it like <unk>/blank)"))
    return TokenTable(symbols, problems)
