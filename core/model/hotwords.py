"""Plain words and phrases -> the token-split hotwords file sherpa-ncnn's modified_beam_search reads.

sherpa-ncnn reads one hotword per line, its tokens separated by spaces, optionally followed by ``:SCORE`` (a
boost for that line), and looks every token up in tokens.txt; a token it cannot find makes it call
``exit(-1)``, which ends the app, and a malformed score makes ``std::stof`` throw. So every token written
here is checked against tokens.txt first, and a line that would fail is refused by its number, with
nothing written.

Checked as sherpa-ncnn really reads tokens.txt: its symbol table (sherpa-ncnn 2.1.15, symbol-table.cc) turns a
symbol's leading ``▁`` into a space, and the hotwords reader splits lines on whitespace, so a word-start BPE piece
(``▁THE``, or ``▁`` alone) can never be found there: sherpa-ncnn exits on it although tokens.txt lists it. Such
lines are refused too, with that reason (sentencepiece starts every phrase with one, so with this sherpa-ncnn
only models whose tokens have no ``▁`` - character models - can take hotwords).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

SCORE_RE = re.compile(r"^:[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?$")
MAX_WORDS_BYTES = 16 << 20
WORD_START = "\u2581"  # sentencepiece's ▁


class HotwordsError(Exception):
    """The inputs cannot be used at all (missing file, not a sentencepiece model); the message names the file."""


@dataclass
class HotwordsResult:
    lines: list[str] = field(default_factory=list)  # the file's lines, tokens split, checked
    problems: list[str] = field(default_factory=list)  # "line N: ..." for each refused input line
    source_lines: list[int] = field(default_factory=list)  # the input line number of each written line

    @property
    def text(self) -> str:
        return "".join(line + "\n" for line in self.lines)


def _read_text(path: Path, what: str) -> str:
    try:
        if not path.is_file():
            raise HotwordsError(f"{path}: not found" if not path.exists() else f"{path}: not a regular file")
        if path.stat().st_size > MAX_WORDS_BYTES:
            raise HotwordsError(f"{path}: {path.stat().st_size:,} bytes is too large for a {what}")
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise HotwordsError(f"{path}: not UTF-8 text (offset {exc.start})") from None
    except OSError as exc:
        raise HotwordsError(f"{path}: cannot be read ({exc.strerror})") from None


def load_vocabulary(tokens: Path) -> set[str]:
    from core.model.tokens import read_tokens
    table = read_tokens(tokens)
    errors = [str(p) for p in table.problems if p.severity == "error"]
    if errors or not table.symbols:
        raise HotwordsError(f"{tokens}: " + ("; ".join(errors) if errors else "no tokens"))
    return set(table.symbols.values())


def load_bpe(bpe_model: Path):
    if not Path(bpe_model).is_file():
        raise HotwordsError(f"{bpe_model}: not found")
    import sentencepiece as spm
    try:
        return spm.SentencePieceProcessor(model_file=str(bpe_model))
    except (OSError, RuntimeError) as exc:
        raise HotwordsError(f"{bpe_model}: not a sentencepiece model ({str(exc).splitlines()[0][:120]})") from None


def _split_chars(word: str, vocab: set[str]) -> list[str]:
    """Without a bpe model: the word itself when it is a token, else its characters (cjkchar models)."""
    return [word] if word in vocab else list(word)


def encode(words_text: str, vocab: set[str], sp=None) -> HotwordsResult:
    """Each non-empty, non-# line: a phrase with an optional trailing ``:SCORE``; tokens checked against ``vocab``."""
    result = HotwordsResult()
    upper_vocab = any(t.upper() == t and t.lower() != t for t in vocab)
    unk = sp.unk_id() if sp is not None else None
    for n, raw in enumerate(words_text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        parts = line.split()
        score = None
        if parts[-1].startswith(":"):
            if not SCORE_RE.match(parts[-1]):
                result.problems.append(f"line {n}: {parts[-1]!r} is not a score (write the boost as :2.0 at the end "
                                       "of the line)")
                continue
            score, parts = parts[-1], parts[:-1]
        if not parts:
            result.problems.append(f"line {n}: a score without words")
            continue
        if any(p.startswith(":") for p in parts):
            result.problems.append(f"line {n}: ':' starts a score, which may only end the line")
            continue
        phrase = " ".join(parts)
        if sp is not None:
            pieces = sp.encode(phrase, out_type=str)
            ids = sp.encode(phrase)
            unknown = [p for p, i in zip(pieces, ids) if p not in vocab or i == unk]
        else:
            pieces = [t for w in parts for t in _split_chars(w, vocab)]
            unknown = [p for p in pieces if p not in vocab]
        word_start = [p for p in pieces if p.startswith(WORD_START) and p not in unknown]
        if word_start and not unknown:
            shown = ", ".join(repr(u) for u in dict.fromkeys(word_start))
            result.problems.append(f"line {n}: {phrase!r} needs word-start token(s) {shown}: sherpa-ncnn reads the "
                                   f"leading {WORD_START} of tokens.txt as a space, so its hotwords reader cannot "
                                   "find them and would exit (a sherpa-ncnn limitation: this phrase cannot be a "
                                   "sherpa-ncnn hotword)")
            continue
        if unknown:
            shown = ", ".join(repr(u) for u in dict.fromkeys(unknown))
            hint = ""
            if upper_vocab and phrase != phrase.upper():
                hint = "; the vocabulary is upper case: write the words in capitals"
            result.problems.append(f"line {n}: {phrase!r} needs token(s) {shown} that tokens.txt does not have "
                                   f"(sherpa-ncnn would exit on it){hint}")
            continue
        result.lines.append(" ".join(pieces) + (f" {score}" if score else ""))
        result.source_lines.append(n)
    return result


def make_hotwords(words_file: Path, tokens: Path, bpe_model: Path | None = None) -> HotwordsResult:
    """Read the inputs and encode; raises HotwordsError when an input cannot be used at all."""
    text = _read_text(Path(words_file), "hotwords list")
    vocab = load_vocabulary(Path(tokens))
    sp = load_bpe(Path(bpe_model)) if bpe_model else None
    result = encode(text, vocab, sp)
    if not result.lines and not result.problems:
        result.problems.append(f"{words_file}: no words (one word or phrase per line)")
    return result


def check_hotwords_file(path: Path, vocab: set[str]) -> list[str]:
    """Problems sherpa-ncnn would exit on in an existing hotwords file (already token-split)."""
    problems = []
    for n, line in enumerate(_read_text(Path(path), "hotwords file").splitlines(), start=1):
        for item in line.split():
            if item in vocab and not item.startswith(WORD_START):
                continue
            if item in vocab:
                problems.append(f"line {n}: token {item!r} starts with {WORD_START}, which sherpa-ncnn reads as a "
                                "space: its hotwords reader cannot find it")
                continue
            if item.startswith(":"):
                if not SCORE_RE.match(item):
                    problems.append(f"line {n}: {item!r} is not a score")
            else:
                problems.append(f"line {n}: token {item!r} is not in tokens.txt")
    return problems
