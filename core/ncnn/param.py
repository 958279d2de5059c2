"""Lossless model of an ncnn text ``.param`` file.

The file is kept as its original lines (text plus line ending), so an
unchanged model serializes back to the exact bytes it was read from, and an
edit touches only the lines it names. Problems are returned as values
(:class:`ParamIssue`, with a 1-based line number and a plain sentence), never
raised as tracebacks: a user's hand-edited file is the normal input here.

The grammar follows ncnn's ``ParamDict::load_param``: ``key=value`` with
integer keys below 32, values that are ints, floats (anything containing
``.``, ``e`` or ``E``), old-style arrays ``-233xx=len,v1,...``, and the newer
forms (strings starting with a letter or a quote, arrays without a length
prefix).
"""
from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = "7767517"
MAX_PARAM_ID = 32  # NCNN_MAX_PARAM_COUNT
ARRAY_KEY_BASE = -23300
MAX_SCALAR_CHARS = 15  # ncnn scans values with %15[^,\n ]
MAX_COUNT_DIGITS = 9  # counts, keys and array lengths: ncnn reads them as int; anything longer is hostile or broken
MAX_PARAM_BYTES = 256 << 20  # the largest published encoder .param is a few MB; more is not a param file

_LINE_RE = re.compile(r"([^\r\n]*)(\r\n|\n|\r|\Z)")
_TOKEN_RE = re.compile(r'[^\s=]+="[^"]*(?:"|$)|\S+')
_INT_RE = re.compile(r"[+-]?[0-9]+\Z")
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")
_NEWLINE_RE = re.compile(rb"\r\n|\n|\r")


@dataclass(frozen=True)
class ParamIssue:
    """One problem found in a param file; ``line`` is 1-based (None: whole file)."""

    line: int | None
    message: str
    severity: str = "error"  # "error" or "warning"

    def __str__(self) -> str:
        where = f"line {self.line}: " if self.line is not None else ""
        return f"{where}{self.message}"


@dataclass(frozen=True)
class Param:
    """One ``key=value`` pair of a layer line, as written and as ncnn reads it."""

    id: int  # 0..31, the slot ncnn stores it in
    key: str  # the key as written, e.g. "-23316" or "16"
    raw: str  # the value as written
    kind: str  # "int", "float", "string" or "array"
    value: object  # int | float | str | tuple of int/float
    old_style: bool = False  # array written as -233xx=len,...

    @property
    def text(self) -> str:
        return f"{self.key}={self.raw}"


@dataclass(frozen=True)
class Layer:
    """A parsed layer line. ``line`` is 1-based; ``index`` counts layers from 0."""

    type: str
    name: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: tuple[Param, ...]
    line: int
    index: int

    def param(self, pid: int) -> Param | None:
        found = None
        for p in self.params:  # ncnn keeps the last of duplicate keys
            if p.id == pid:
                found = p
        return found

    def get(self, pid: int, default=None):
        p = self.param(pid)
        return default if p is None else p.value


@dataclass
class ParamFile:
    """A parsed param file: the raw lines plus the structure read from them."""

    lines: list[str]  # each line with its own ending ("" ending on a last line without one)
    layers: tuple[Layer, ...]
    layer_count: int
    blob_count: int
    issues: list[ParamIssue] = field(default_factory=list)
    source: str = "<param>"
    header_line: int = 2

    # -- serialization -------------------------------------------------
    def text(self) -> str:
        return "".join(self.lines)

    def to_bytes(self) -> bytes:
        return self.text().encode("utf-8")

    @property
    def eol(self) -> str:
        """The line ending new lines get: the one the magic line uses."""
        ending = _split_eol(self.lines[0])[1] if self.lines else ""
        return ending or "\n"

    # -- structure -----------------------------------------------------
    @property
    def errors(self) -> list[ParamIssue]:
        return [i for i in self.issues if i.severity == "error"]

    @property
    def warnings(self) -> list[ParamIssue]:
        return [i for i in self.issues if i.severity == "warning"]

    @property
    def ok(self) -> bool:
        return not self.errors

    def layers_of_type(self, *types: str) -> list[Layer]:
        return [layer for layer in self.layers if layer.type in types]

    def layer_named(self, name: str) -> Layer | None:
        for layer in self.layers:
            if layer.name == name:
                return layer
        return None

    def layer_types(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for layer in self.layers:
            counts[layer.type] = counts.get(layer.type, 0) + 1
        return counts

    @property
    def input_names(self) -> list[str]:
        return [top for layer in self.layers if layer.type == "Input" for top in layer.tops]

    @property
    def blob_names(self) -> list[str]:
        seen: dict[str, None] = {}
        for layer in self.layers:
            for name in layer.bottoms + layer.tops:
                seen.setdefault(name, None)
        return list(seen)

    @property
    def output_names(self) -> list[str]:
        """Blobs some layer produces and no layer reads: the graph's outputs."""
        consumed = {b for layer in self.layers for b in layer.bottoms}
        return [t for layer in self.layers for t in layer.tops if t not in consumed]

    def counted_blobs(self) -> int:
        """How many blob slots ncnn fills while loading (every top, plus unknown bottoms)."""
        known: set[str] = set()
        count = 0
        for layer in self.layers:
            for b in layer.bottoms:
                if b not in known:
                    known.add(b)
                    count += 1
            for t in layer.tops:
                known.add(t)
                count += 1
        return count

    # -- edits (each returns a new, re-parsed ParamFile) ----------------
    def with_lines(self, lines: list[str]) -> "ParamFile":
        result = parse_param("".join(lines), self.source)
        if result.model is None:  # an edit must never produce an unreadable file
            raise ValueError("edit produced an unreadable param file: " + "; ".join(map(str, result.issues)))
        return result.model

    def with_line_inserted(self, after_line: int, text: str) -> "ParamFile":
        """Insert ``text`` as a new line after 1-based line ``after_line``."""
        return self.with_lines(insert_line(self.lines, after_line, text, self.eol))

    def with_line_replaced(self, line: int, text: str) -> "ParamFile":
        lines = list(self.lines)
        lines[line - 1] = text + _split_eol(lines[line - 1])[1]
        return self.with_lines(lines)

    def with_line_removed(self, line: int) -> "ParamFile":
        lines = list(self.lines)
        body, eol = _split_eol(lines[line - 1])
        del lines[line - 1]
        if not eol and lines:  # removed the last line: the new last line keeps "no final newline"
            lines[-1] = _split_eol(lines[-1])[0]
        return self.with_lines(lines)

    def with_header(self, layer_count: int, blob_count: int) -> "ParamFile":
        """Rewrite the counts, keeping the header's own spacing."""
        return self.with_lines(replace_header(self.lines, self.header_line, layer_count, blob_count))

    def header_text(self) -> str:
        return _split_eol(self.lines[self.header_line - 1])[0].strip()


@dataclass
class ParseResult:
    """What parsing gave: a model (None when the file is unusable) and the issues found."""

    model: ParamFile | None
    issues: list[ParamIssue]
    source: str = "<param>"

    @property
    def ok(self) -> bool:
        return self.model is not None and not any(i.severity == "error" for i in self.issues)

    def describe(self) -> str:
        return "\n".join(f"{self.source}: {i}" for i in self.issues)


def insert_line(lines: list[str], after_line: int, text: str, default_eol: str = "\n") -> list[str]:
    """A copy of ``lines`` with ``text`` inserted after 1-based ``after_line``.

    The new line takes the ending of the line before it, so a file with mixed
    endings never has a new ``\r`` merge with a following ``\n``.
    """
    out = list(lines)
    prev_body, prev_eol = _split_eol(out[after_line - 1])
    if prev_eol:
        out.insert(after_line, text + prev_eol)
    else:  # the previous line was the last one and had no ending: keep "no final newline"
        out[after_line - 1] = prev_body + default_eol
        out.insert(after_line, text)
    return out


def replace_header(lines: list[str], header_line: int, layer_count: int, blob_count: int) -> list[str]:
    """A copy of ``lines`` with new header counts, keeping the header's spacing."""
    out = list(lines)
    body, eol = _split_eol(out[header_line - 1])
    numbers = iter([str(layer_count), str(blob_count)])
    body = re.sub(r"[0-9]+", lambda m: next(numbers, m.group(0)), body, count=2)
    out[header_line - 1] = body + eol
    return out


def format_layer_line(type_: str, name: str, bottoms=(), tops=(), params=()) -> str:
    """A layer line padded the way pnnx writes it (type and name in 24 columns)."""
    parts = [f"{type_:<24} {name:<24} {len(bottoms)} {len(tops)}"]
    parts.extend(bottoms)
    parts.extend(tops)
    parts.extend(params)
    return " ".join(parts)


def load_param(path: str | os.PathLike) -> ParseResult:
    """Read and parse a param file; unreadable paths become issues, not exceptions."""
    source = str(path)
    p = Path(path)
    try:
        st = p.stat()
        if p.is_dir():
            raise IsADirectoryError
        if not stat.S_ISREG(st.st_mode):
            return ParseResult(None, [ParamIssue(None, "is not a regular file (a device, pipe or socket); "
                                                       "give the path of a .param file")], source)
        if st.st_size > MAX_PARAM_BYTES:
            return ParseResult(None, [ParamIssue(None, f"is {st.st_size:,} bytes; an ncnn .param is text of a few MB "
                                                       f"at most (limit {MAX_PARAM_BYTES:,}); is this a .bin file?")],
                               source)
        with open(p, "rb") as fh:
            data = fh.read(st.st_size + 1)  # (not the limit: that would reserve 256 MB for every param read)
    except FileNotFoundError:
        return ParseResult(None, [ParamIssue(None, "file not found; check the path")], source)
    except IsADirectoryError:
        return ParseResult(None, [ParamIssue(None, "is a directory, not a .param file")], source)
    except OSError as exc:
        return ParseResult(None, [ParamIssue(None, f"cannot be read ({exc.strerror}); check its permissions")], source)
    return parse_param(data, source)


def parse_param(data: bytes | str, source: str = "<param>") -> ParseResult:
    """Parse the text of an ncnn param file."""
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = len(_NEWLINE_RE.split(data[: exc.start]))
            return ParseResult(
                None,
                [ParamIssue(line, f"is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
                                  "is this a binary .param.bin or a .bin weight file?")],
                source,
            )
    else:
        text = data
    lines = _split_lines(text)
    issues: list[ParamIssue] = []
    # ncnn reads whitespace-separated tokens, so blank lines before the magic or the header are harmless
    content = (i for i, line in enumerate(lines) if line.strip())
    magic_idx = next(content, None)
    if magic_idx is None:
        return ParseResult(None, [ParamIssue(1, f"the file is empty; an ncnn param file starts with the magic number {MAGIC}")], source)
    first = _split_eol(lines[magic_idx])[0]
    if first.startswith("\ufeff"):
        return ParseResult(None, [ParamIssue(magic_idx + 1, "the file starts with a byte-order mark; save it as plain UTF-8 without BOM")], source)
    if first.strip() != MAGIC:
        return ParseResult(None, [ParamIssue(magic_idx + 1, f"expected the magic number {MAGIC}, found {first.strip()[:40]!r}; "
                                                            "this is not an ncnn text param file")], source)
    header_idx = next(content, None)
    header = _split_eol(lines[header_idx])[0].split() if header_idx is not None else []
    if len(header) != 2 or not all(_INT_RE.match(x) and len(x.lstrip("+-")) <= MAX_COUNT_DIGITS and int(x) >= 0
                                   for x in header):
        found = _split_eol(lines[header_idx])[0].strip() if header_idx is not None else "nothing"
        where = header_idx + 1 if header_idx is not None else magic_idx + 2
        return ParseResult(None, [ParamIssue(where, f"expected the header 'layer_count blob_count' (two whole numbers of at most "
                                                   f"{MAX_COUNT_DIGITS} digits), found {_clip(found)!r}")], source)
    layer_count, blob_count = int(header[0]), int(header[1])

    layers: list[Layer] = []
    cache: dict[str, Param] = {}
    n_lines = 0
    for idx in range(header_idx + 1, len(lines)):
        body = lines[idx].rstrip("\r\n")
        if not body or body.isspace():
            continue
        n_lines += 1
        layer = _parse_layer(body, idx + 1, len(layers), issues, cache)
        if layer is not None:
            layers.append(layer)

    model = ParamFile(lines, tuple(layers), layer_count, blob_count, issues, source, header_idx + 1)
    _check_counts(model, n_lines, issues)
    _check_names(model, issues)
    return ParseResult(model, issues, source)


# -- internals ---------------------------------------------------------------

def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _split_eol(line: str) -> tuple[str, str]:
    if line.endswith("\r\n"):
        return line[:-2], "\r\n"
    if line.endswith(("\n", "\r")):
        return line[:-1], line[-1]
    return line, ""


_OTHER_BREAKS_RE = re.compile("[\v\f\x1c\x1d\x1e\x85\u2028\u2029]")


def _split_lines(text: str) -> list[str]:
    """Lines with their endings; only \n, \r\n and \r end a line (like ncnn)."""
    if not _OTHER_BREAKS_RE.search(text):
        return text.splitlines(keepends=True)  # same result, much faster
    return [m.group(0) for m in _LINE_RE.finditer(text) if m.group(0)]


def _is_count(text: str) -> bool:
    return text.isdigit() and text.isascii() and len(text) <= MAX_COUNT_DIGITS


def _parse_layer(body: str, line: int, index: int, issues: list[ParamIssue], cache: dict) -> Layer | None:
    tokens = _TOKEN_RE.findall(body) if '"' in body else body.split()
    if len(tokens) < 4:
        issues.append(ParamIssue(line, f"a layer line needs 'type name bottom_count top_count ...', found {_clip(body.strip())!r}"))
        return None
    type_, name, bc_s, tc_s = tokens[:4]
    if not (_is_count(bc_s) and _is_count(tc_s)):
        issues.append(ParamIssue(line, f"layer {name!r} ({type_}): bottom and top counts must be whole numbers, "
                                       f"found {_clip(bc_s, 20)!r} and {_clip(tc_s, 20)!r}"))
        return None
    bc, tc = int(bc_s), int(tc_s)
    n = bc + tc
    names = tokens[4:4 + n]
    if len(names) < n or "=" in "".join(names):
        listed = next((i for i, t in enumerate(names) if "=" in t), len(names))
        issues.append(ParamIssue(line, f"layer {name!r} ({type_}) declares {bc} bottom(s) and {tc} top(s) but lists "
                                       f"{listed} blob name(s); fix the counts or the names"))
        return None
    params: list[Param] = []
    seen_ids: set[int] = set()
    repeats: dict[int, int] = {}
    ok = True
    prev_array_key: str | None = None  # the key of the previous token when it was (meant as) an array
    for tok in tokens[4 + n:]:
        param = cache.get(tok)
        if param is None:
            where = f"layer {name!r} ({type_})"
            if "=" not in tok:
                if prev_array_key is not None and tok[:1] in ",0123456789-+.":
                    issues.append(ParamIssue(line, f"{where}: a space inside the array of key {prev_array_key} "
                                                   f"(at {tok!r}); ncnn stops reading an array at the first space, "
                                                   "remove the spaces"))
                else:
                    issues.append(ParamIssue(line, f"{where}: {tok!r} is not a key=value pair; "
                                                   f"the blob count may be wrong ({bc} bottom(s), {tc} top(s) declared)"))
                ok = False
                prev_array_key = None
                continue
            key, _, raw = tok.partition("=")
            prev_array_key = key if ("," in raw or key.startswith("-233")) else None
            param = _parse_param_token(tok, where, line, issues)
            if param is None:
                ok = False
                continue
            cache[tok] = param
        else:
            prev_array_key = param.key if param.kind == "array" else None
        if param.id in seen_ids:
            repeats[param.id] = repeats.get(param.id, 1) + 1
        seen_ids.add(param.id)
        params.append(param)
    for pid, times in repeats.items():  # one warning per key, however often it repeats (a hostile line repeats 1e6x)
        said = "twice" if times == 2 else f"{times} times"
        issues.append(ParamIssue(line, f"layer {name!r} ({type_}): key {pid} is given {said}; "
                                       "ncnn keeps the last value", "warning"))
    if not ok:
        return None
    return Layer(type_, name, tuple(names[:bc]), tuple(names[bc:]), tuple(params), line, index)


def _parse_param_token(tok: str, where: str, line: int, issues: list[ParamIssue]) -> Param | None:
    key, _, raw = tok.partition("=")
    if not _INT_RE.match(key) or len(key.lstrip("+-")) > MAX_COUNT_DIGITS:
        issues.append(ParamIssue(line, f"{where}: malformed key in {tok[:40]!r}; keys are whole numbers "
                                       f"(at most {MAX_COUNT_DIGITS} digits)"))
        return None
    k = int(key)
    old_style = k <= ARRAY_KEY_BASE
    pid = -k + ARRAY_KEY_BASE if old_style else k
    if not 0 <= pid < MAX_PARAM_ID:
        issues.append(ParamIssue(line, f"{where}: key {key} is out of range; ncnn accepts parameter ids 0-{MAX_PARAM_ID - 1} "
                                       f"(arrays {ARRAY_KEY_BASE}..{ARRAY_KEY_BASE - MAX_PARAM_ID + 1})"))
        return None
    if raw == "":
        issues.append(ParamIssue(line, f"{where}: key {key} has no value"))
        return None
    if raw[0] != '"' and not (raw[0].isalpha()):
        too_long = [v for v in raw.split(",") if len(v) > MAX_SCALAR_CHARS]
        if too_long:
            issues.append(ParamIssue(line, f"{where}: value {_clip(too_long[0], 20)!r} of key {key} is longer than "
                                           f"{MAX_SCALAR_CHARS} characters; ncnn reads at most {MAX_SCALAR_CHARS}"))
            return None
    if old_style:
        parts = raw.split(",")
        if not _INT_RE.match(parts[0]) or len(parts[0]) > MAX_COUNT_DIGITS:
            issues.append(ParamIssue(line, f"{where}: array key {key} must start with its length, found "
                                           f"{parts[0][:20]!r}"))
            return None
        n, elems = int(parts[0]), parts[1:]
        if elems and elems[-1] == "":
            issues.append(ParamIssue(line, f"{where}: array key {key} ends with a comma; remove it (or a space follows it)"))
            return None
        if len(elems) != n:
            issues.append(ParamIssue(line, f"{where}: array key {key} says {n} value(s) but lists {len(elems)}"))
            return None
        values = []
        for e in elems:
            v = _scalar(e)
            if v is None:
                issues.append(ParamIssue(line, f"{where}: array key {key} has a malformed element {e!r}"))
                return None
            values.append(v)
        return Param(pid, key, raw, "array", tuple(values), True)
    if raw[0].isalpha() or raw[0] == '"':
        if raw[0] == '"' and (len(raw) < 2 or not raw.endswith('"')):
            issues.append(ParamIssue(line, f"{where}: string value of key {key} has no closing quote"))
            return None
        return Param(pid, key, raw, "string", raw.strip('"'))
    if "," in raw:
        elems = raw.split(",")
        values = [_scalar(e) for e in elems]
        if any(v is None for v in values):
            issues.append(ParamIssue(line, f"{where}: array value of key {key} is malformed: {raw!r}"))
            return None
        return Param(pid, key, raw, "array", tuple(values), False)
    v = _scalar(raw)
    if v is None:
        issues.append(ParamIssue(line, f"{where}: value {raw!r} of key {key} is not a number"))
        return None
    return Param(pid, key, raw, "float" if isinstance(v, float) else "int", v)


def _scalar(text: str) -> int | float | None:
    """ncnn's rule: a value with '.', 'e' or 'E' is a float, otherwise an int."""
    if not text or len(text) > MAX_SCALAR_CHARS:
        return None
    if any(c in text for c in ".eE"):
        return float(text) if _FLOAT_RE.match(text) else None
    return int(text) if _INT_RE.match(text) else None


def _check_counts(model: ParamFile, n_lines: int, issues: list[ParamIssue]) -> None:
    if model.layer_count != n_lines:
        effect = ("ncnn reads only the first "
                  f"{model.layer_count} and silently drops the rest") if model.layer_count < n_lines else \
                 "ncnn fails while reading past the last line"
        issues.append(ParamIssue(model.header_line, f"the header says {model.layer_count} layers but the file has {n_lines} layer lines; "
                                    f"{effect}. Set the first header number to {n_lines}"))
    if len(model.layers) == n_lines:  # blob counts only mean something when every line parsed
        needed = model.counted_blobs()
        if model.blob_count < needed:
            issues.append(ParamIssue(model.header_line, f"the header says {model.blob_count} blobs but the layers define {needed}; "
                                        f"ncnn would write past its blob table. Set the second header number to {needed}"))
        elif model.blob_count > needed:
            issues.append(ParamIssue(model.header_line, f"the header says {model.blob_count} blobs but the layers define {needed}", "warning"))


def _check_names(model: ParamFile, issues: list[ParamIssue]) -> None:
    # Duplicate *layer* names are normal in pnnx output (e.g. two Split layers
    # named splitncnn_0) and harmless: ncnn looks blobs up by name, not layers.
    produced: set[str] = set()
    for layer in model.layers:
        for b in layer.bottoms:
            if b not in produced:
                issues.append(ParamIssue(layer.line, f"layer {layer.name!r} reads blob {b!r} that no earlier layer produces", "warning"))
        for t in layer.tops:
            if t in produced:
                issues.append(ParamIssue(layer.line, f"blob {t!r} is produced twice (again by layer {layer.name!r})", "warning"))
            produced.add(t)
