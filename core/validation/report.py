"""The one reader of OUT/validation.json (written by core.validation.validate) and the one summary of it.

The CLI, the wizard, the summary step and the model card all read the file through :func:`read_validation`, so
a field renamed in the writer is renamed here once, and a missing, unreadable or half-written file is one clear
sentence (``ValidationReport.problem``) instead of a traceback in whichever front-end looked first.
:func:`summary_lines` is what both front-ends show as the validation checks.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

FILE = "validation.json"
COSINE_TARGET = 0.99  # the int8 check's target on the mean cosine (core.validation.validate.validate_int8)


@dataclass(frozen=True)
class NumericCheck:
    """One torch-vs-ncnn comparison, or the error that prevented it (``max_abs`` is None then)."""

    net: str
    output: str = ""
    note: str = ""
    ok: bool = False
    max_abs: float | None = None
    tolerance: float | None = None
    error: str = ""

    @property
    def label(self) -> str:
        return f"{self.net} {self.output} {self.note}".strip()

    @property
    def detail(self) -> str:
        if self.max_abs is None or self.tolerance is None:
            return self.error
        return f"max abs diff {self.max_abs:.1e} {'≤' if self.ok else '>'} {self.tolerance:.0e}"


@dataclass(frozen=True)
class Transcript:
    wav: str
    text: str
    wer: float | None = None
    reference: str | None = None

    @property
    def name(self) -> str:
        return Path(self.wav).name


@dataclass(frozen=True)
class DecodeRun:
    """sherpa-ncnn decoding the test wavs (fp16 or int8), in a child process."""

    model: str
    ok: bool
    results: tuple[Transcript, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class Agreement:
    """torch vs sherpa-ncnn tokens on one wav (``error`` when the comparison itself failed)."""

    model: str
    wav: str = ""
    match: bool = False
    rate: float | None = None
    first_index: int | None = None  # the first token that differs
    error: str = ""


@dataclass(frozen=True)
class Cosine:
    """int8 vs fp32 on one output: cosine similarity over the frames."""

    net: str
    output: str
    mean: float
    worst: float
    audio: str = ""  # what it was measured on (the calibration audio's first seconds, or the test wavs)

    @property
    def ok(self) -> bool:
        return self.mean >= COSINE_TARGET

    @property
    def on(self) -> str:
        return f" on {self.audio}" if self.audio else ""


@dataclass
class ValidationReport:
    """validation.json, typed. ``present`` is False when there is no file; ``problem`` says why a file that is
    there could not be read (then nothing else is filled in)."""

    present: bool = False
    problem: str = ""
    passed: bool | None = None
    numeric: list[NumericCheck] = field(default_factory=list)
    decode: DecodeRun | None = None
    decode_int8: DecodeRun | None = None
    agreement: list[Agreement] = field(default_factory=list)
    int8_cosine: list[Cosine] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    raw: dict | None = None  # the file as written (embedded in summary.json as it is)

    @property
    def readable(self) -> bool:
        return self.present and not self.problem


@dataclass(frozen=True)
class Line:
    """One line of the summary: ``status`` is "ok", "failed" or "warning" (a front-end picks the mark)."""

    status: str
    text: str


class _Bad(Exception):
    """A field of the file is not what the writer writes."""


def read_validation(out_dir: Path | str, name: str = FILE) -> ValidationReport:
    """OUT/validation.json as a ValidationReport; never raises (an unreadable file is ``problem``)."""
    path = Path(out_dir) / name
    if not path.is_file():
        return ValidationReport()
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        return ValidationReport(True, f"{path}: cannot be read ({exc.strerror or exc}); run validation again")
    except (UnicodeDecodeError, ValueError) as exc:
        return ValidationReport(True, f"{path}: not valid JSON ({exc}); the validation was interrupted while "
                                      "writing it, or the file was edited: run validation again")
    try:
        return parse_validation(raw)
    except _Bad as exc:
        return ValidationReport(True, f"{path}: {exc}; it was not written by this version's validation: run "
                                      "validation again")


def parse_validation(raw: object) -> ValidationReport:
    """The typed report of an already-parsed validation.json (raises _Bad naming the first unusable field)."""
    if not isinstance(raw, dict):
        raise _Bad(f"holds a JSON {type(raw).__name__}, not an object")
    report = ValidationReport(present=True, raw=raw, passed=_opt(raw, "ok", bool),
                              notes=[str(n) for n in _list(raw, "notes")])
    for i, r in enumerate(_list(raw, "numeric")):
        where = f"numeric[{i}]"
        _need(r, where, "net")
        max_abs, tol = _opt(r, "max_abs", (int, float), where), _opt(r, "tolerance", (int, float), where)
        if (max_abs is None) != (tol is None):
            raise _Bad(f"{where} has only one of max_abs and tolerance")
        report.numeric.append(NumericCheck(str(r["net"]), str(r.get("output", "")), str(r.get("note", "")),
                                           bool(r.get("ok")), max_abs, tol, str(r.get("error") or "")))
    report.decode = _decode(raw, "decode", "fp16")
    report.decode_int8 = _decode(raw, "decode_int8", "int8")
    for i, a in enumerate(_list(raw, "agreement")):
        first = a.get("first_divergence") if isinstance(a, dict) else None
        if not isinstance(a, dict) or (first is not None and not isinstance(first, dict)):
            raise _Bad(f"agreement[{i}] is not an object")
        report.agreement.append(Agreement(str(a.get("model") or "fp16"), str(a.get("wav") or ""),
                                          bool(a.get("match")), _opt(a, "rate", (int, float), f"agreement[{i}]"),
                                          first.get("index") if first else None, str(a.get("error") or "")))
    for i, s in enumerate(_list(raw, "int8_similarity")):
        where = f"int8_similarity[{i}]"
        _need(s, where, "net", "output", "mean_cosine", "min_cosine")
        report.int8_cosine.append(Cosine(str(s["net"]), str(s["output"]), float(_num(s, "mean_cosine", where)),
                                         float(_num(s, "min_cosine", where)), str(s.get("audio") or "")))
    return report


def _list(raw: dict, key: str) -> list:
    value = raw.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise _Bad(f"{key} is a {type(value).__name__}, not a list")
    return value


def _need(item: object, where: str, *keys: str) -> None:
    if not isinstance(item, dict):
        raise _Bad(f"{where} is not an object")
    missing = [k for k in keys if k not in item]
    if missing:
        raise _Bad(f"{where} has no {', '.join(missing)}")


def _num(item: dict, key: str, where: str):
    value = item[key]
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise _Bad(f"{where}.{key} is {value!r}, not a number")
    return value


def _opt(item: dict, key: str, types, where: str = ""):
    value = item.get(key)
    if value is None:
        return None
    if not isinstance(value, types) or (bool not in (types if isinstance(types, tuple) else (types,))
                                        and isinstance(value, bool)):
        raise _Bad(f"{where + '.' if where else ''}{key} is {value!r}")
    return value


def _decode(raw: dict, key: str, model: str) -> DecodeRun | None:
    d = raw.get(key)
    if not d:
        return None
    if not isinstance(d, dict):
        raise _Bad(f"{key} is not an object")
    results = []
    for i, item in enumerate(d.get("results") or []):
        _need(item, f"{key}.results[{i}]", "wav", "text")
        results.append(Transcript(str(item["wav"]), str(item["text"]),
                                  _opt(item, "wer", (int, float), f"{key}.results[{i}]"), item.get("reference")))
    return DecodeRun(str(d.get("model") or model), bool(d.get("ok")), tuple(results), str(d.get("error") or ""))


# -- the summary both front-ends show -------------------------------------------------------------------------

def summary_lines(report: ValidationReport, per_wav: bool = False) -> list[Line]:
    """The validation checks as lines: every numeric comparison, each decode (one line, or one per wav with its
    transcript when ``per_wav``), the int8 cosines (below the target a warning: validation notes it, it does
    not fail) and the token agreement when it failed. An unreadable file is one failed line."""
    if report.problem:
        return [Line("failed", report.problem)]
    lines = [Line("ok" if r.ok else "failed", f"{r.label}: {r.detail}") for r in report.numeric]
    for d, what in ((report.decode, "sherpa-ncnn"), (report.decode_int8, "sherpa-ncnn int8")):
        if d is None:
            continue
        if not d.ok:
            lines.append(Line("failed", f"{what}: {d.error or 'failed'}"))
        elif per_wav:
            lines += [Line("ok", f"sherpa-ncnn {d.model}: {t.name}: {t.text!r}"
                                 + (f"  WER {t.wer:.1%}" if t.wer is not None else "")) for t in d.results]
        else:
            lines.append(Line("ok", f"sherpa-ncnn ({d.model}) loaded the {'int8 ' if d.model == 'int8' else ''}"
                                    f"model and decoded {len(d.results)} wav(s)"))
    lines += [Line("ok" if s.ok else "warning", f"int8 {s.net} {s.output} vs fp32: cosine mean {s.mean:.4f} "
                                                f"(worst {s.worst:.4f}){s.on}") for s in report.int8_cosine]
    lines += [Line("failed", _agreement_text(a)) for a in report.agreement
              if a.model != "int8" and (a.error or not a.match)]
    return lines


def _agreement_text(a: Agreement) -> str:
    wav = f" {Path(a.wav).name}" if a.wav else ""
    if a.error:
        return f"agreement {a.model}{wav}: {a.error}"
    rate = f" (agreement {a.rate:.1%})" if a.rate is not None else ""
    return f"agreement {a.model}{wav}: torch and sherpa-ncnn differ from token {a.first_index}{rate}"


def transcripts(report: ValidationReport) -> list[tuple[str, str, str | None]]:
    """(wav name, fp16 text, int8 text or None) for every wav the fp16 model decoded."""
    if report.decode is None or not report.decode.ok:
        return []
    int8 = {t.name: t.text for t in report.decode_int8.results} if report.decode_int8 and report.decode_int8.ok \
        else None
    return [(t.name, t.text, None if int8 is None else int8.get(t.name, "-")) for t in report.decode.results]
