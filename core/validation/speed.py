"""How fast a model decodes in sherpa-ncnn: real-time factor, first-result latency, load time and peak memory.

The measuring code is ``assets/bench_template.py``, the very file a run writes as ``OUT/bench.py``, so the
wizard's figures and the ones the user gets on the target device come from one piece of code. Every
(model, threads) pair is decoded in its own child process (a bad model can crash sherpa-ncnn); the peak
resident memory is that child's: its own VmHWM on Linux (``os.wait4``'s ru_maxrss also holds the parent's size at
the fork, which the wizard's process would dominate), else the ru_maxrss ``os.wait4`` reports for it.
"""
from __future__ import annotations

import importlib.util
import os
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

TEMPLATE = Path(__file__).resolve().parents[2] / "assets" / "bench_template.py"
SUMMARY_KEYS = ("model", "threads", "rtf", "load_seconds", "peak_mb", "first_result_seconds")
MODELS = ("fp16", "int8")


class SpeedError(Exception):
    """The measurement cannot start (no model files, unreadable wav); the message names the file."""


def bench_module():
    """The bench template as a module (it imports only the standard library at module level)."""
    spec = importlib.util.spec_from_file_location("sherpa_ncnn_wizard_bench", TEMPLATE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_average() -> float | None:
    """The 1-minute load average while measuring: a busy machine makes multi-thread figures meaningless."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def default_threads() -> list[int]:
    """1 thread and all cores (one entry when the machine has one core)."""
    return sorted({1, bench_module().cpu_count()})


def available_models(model_dir: Path) -> list[str]:
    """fp16 when the plain set is complete, int8 when the int8 encoder and joiner are there too."""
    bench = bench_module()
    return [m for m in MODELS if not bench.missing_files(str(model_dir), m)]


def check_inputs(model_dir: Path, wavs: list[Path], models: list[str] | None = None,
                 threads: list[int] | None = None) -> list[str]:
    """Every reason the measurement cannot run, each naming its file or argument."""
    bench = bench_module()
    problems = []
    if not Path(model_dir).is_dir():
        return [f"{model_dir}: not a directory"]
    for m in models or []:
        gone = bench.missing_files(str(model_dir), m)
        if gone:
            problems.append(f"{model_dir}: the {m} model is incomplete: {', '.join(Path(g).name for g in gone)} "
                            "missing")
    if models is None and not available_models(model_dir):
        gone = bench.missing_files(str(model_dir), "fp16")
        problems.append(f"{model_dir}: no sherpa-ncnn model here ({', '.join(Path(g).name for g in gone)} missing)")
    if not wavs:
        problems.append("no test wavs: give at least one --wav FILE (16 kHz mono PCM is what the model hears)")
    for w in wavs:
        try:
            bench.read_wav(str(w))
        except (OSError, EOFError, ValueError, wave.Error) as exc:
            problems.append(f"{w}: cannot be read as a PCM wav ({exc})")
    for t in threads or []:
        if t < 1:
            problems.append(f"--threads {t}: give 1 or more")
    return problems


@dataclass
class SpeedReport:
    rows: list[dict] = field(default_factory=list)  # one per (model, threads), as bench.py prints them

    @property
    def errors(self) -> list[str]:
        return [f"{r['model']}, {r['threads']} thread(s): {r['error']}" for r in self.rows if r.get("error")]

    def summary(self) -> list[dict]:
        """What summary.json keeps under ``speed`` (no decoded texts)."""
        return [{k: r.get(k) for k in SUMMARY_KEYS} for r in self.rows if not r.get("error")]

    def as_dict(self) -> dict:
        return {"rows": self.rows, "errors": self.errors, "cores": bench_module().cpu_count(),
                "load_average": load_average(),
                "definitions": {"rtf": "decoding seconds / audio seconds, load excluded",
                                "first_result_seconds": "wall seconds from the first audio fed (as fast as possible, "
                                                        "0.1 s chunks) to the first non-empty text",
                                "load_seconds": "seconds to construct sherpa_ncnn.Recognizer",
                                "peak_mb": "peak resident memory of the decoding child (Python included)"}}


def measure(model_dir: Path, wavs: list[Path], models: list[str] | None = None, threads: list[int] | None = None,
            *, on_row: Callable[[dict], None] | None = None, cancelled: Callable[[], bool] | None = None,
            timeout: float = 600) -> SpeedReport:
    """Decode ``wavs`` with every (model, threads) pair, each in its own child; raises SpeedError on bad input."""
    model_dir = Path(model_dir).resolve()
    problems = check_inputs(model_dir, wavs, models, threads)
    if problems:
        raise SpeedError("; ".join(problems))
    bench = bench_module()
    models = models or available_models(model_dir)
    threads = threads or default_threads()
    report = SpeedReport()
    for m in models:
        for t in threads:
            if cancelled is not None and cancelled():
                return report
            row = bench.run_one(str(model_dir), m, t, [str(Path(w).resolve()) for w in wavs], timeout=timeout)
            report.rows.append(row)
            if on_row is not None:
                on_row(row)
    return report


def format_table(rows: list[dict]) -> str:
    return bench_module().table(rows)
