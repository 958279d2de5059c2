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
                                "peak_mb": "peak resident memory of the decoding child (Python included)",
                                "measured_in": "validate: the validation's own 1-thread decode of every test wav "
                                               "(on its own core); speed: this step's child (more than 1 thread: "
                                               f"the first wavs holding {ALL_CORES_AUDIO_SECONDS:g} s of audio)",
                                "audio_seconds": "the audio the row decoded"}}


ALL_CORES_AUDIO_SECONDS = 2.0  # rows with more than one thread decode the first wavs holding this much audio


@dataclass
class Measurement:
    """One (model, threads) child to run, on these wavs."""
    model: str
    threads: int
    wavs: list[Path]


def audio_seconds(wav: Path) -> float:
    """A PCM wav's duration from its header (0 when unreadable: check_inputs reports that)."""
    try:
        with wave.open(str(wav), "rb") as w:
            return w.getnframes() / float(w.getframerate() or 1)
    except (OSError, EOFError, wave.Error):
        return 0.0


def first_seconds(wavs: list[Path], seconds: float | None) -> list[Path]:
    """The first wavs that together hold at least ``seconds`` of audio (at least one; all when None)."""
    if seconds is None:
        return list(wavs)
    taken, total = [], 0.0
    for w in wavs:
        if taken and total >= seconds:
            break
        taken.append(w)
        total += audio_seconds(w)
    return taken


def plan_measurements(models: list[str], threads: list[int], wavs: list[Path], known: dict | None = None,
                      all_cores_seconds: float | None = ALL_CORES_AUDIO_SECONDS,
                      single_seconds: float | None = None) -> list[Measurement]:
    """What is left to measure: every (model, threads) pair without a ``known`` row ((model, threads) -> row,
    e.g. validation's 1-thread decodes), more than one thread on the first ``all_cores_seconds`` of audio only
    (a real-time factor needs seconds of audio, not every test wav); one thread on every wav, or on the first
    ``single_seconds`` when given."""
    known = known or {}
    return [Measurement(m, t, first_seconds(wavs, all_cores_seconds) if t != 1 else
                        first_seconds(wavs, single_seconds) if single_seconds else list(wavs))
            for m in models for t in threads if (m, t) not in known]


def measure(model_dir: Path, wavs: list[Path], models: list[str] | None = None, threads: list[int] | None = None,
            *, on_row: Callable[[dict], None] | None = None, cancelled: Callable[[], bool] | None = None,
            timeout: float = 600, known: dict | None = None, all_cores_seconds: float | None = None,
            side_by_side: bool = False, single_seconds: float | None = None) -> SpeedReport:
    """Decode ``wavs`` with every (model, threads) pair, each in its own child; raises SpeedError on bad input.

    ``known``: (model, threads) -> a row measured already (validation's 1-thread decodes), taken as it is.
    ``side_by_side``: 1-thread children of different models run at the same time when there are cores for them
    (each on its own core); children with more threads always run one at a time, alone.
    ``all_cores_seconds``: see plan_measurements."""
    model_dir = Path(model_dir).resolve()
    problems = check_inputs(model_dir, wavs, models, threads)
    if problems:
        raise SpeedError("; ".join(problems))
    bench = bench_module()
    models = models or available_models(model_dir)
    threads = threads or default_threads()
    known = known or {}
    todo = plan_measurements(models, threads, [Path(w).resolve() for w in wavs], known, all_cores_seconds,
                             single_seconds)
    rows: dict[tuple[str, int], dict] = {}
    for key, row in known.items():
        if key[0] in models and key[1] in threads:
            rows[key] = row
            if on_row is not None:
                on_row(row)

    def run(m: Measurement) -> dict:
        row = bench.run_one(str(model_dir), m.model, m.threads, [str(w) for w in m.wavs], timeout=timeout)
        row["measured_in"] = "speed"
        return row

    singles = [m for m in todo if m.threads == 1]
    workers = min(len(singles), bench.cpu_count()) if side_by_side else 1
    if workers > 1 and not (cancelled is not None and cancelled()):
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for m, row in zip(singles, pool.map(run, singles)):
                rows[(m.model, m.threads)] = row
                if on_row is not None:
                    on_row(row)
        todo = [m for m in todo if m.threads != 1]
    for m in todo:
        if cancelled is not None and cancelled():
            break
        rows[(m.model, m.threads)] = row = run(m)
        if on_row is not None:
            on_row(row)
    return SpeedReport([rows[(m, t)] for m in models for t in threads if (m, t) in rows])


SHARED_CORE = 0.9  # a decode whose CPU time is below this share of its wall time did not have a core to itself


def known_rows(validation: dict, cores: int | None = None) -> dict:
    """validation.json's 1-thread decode figures as speed rows ((model, 1) -> row): the validation process decodes
    each model once on its own core (beside torch's one), timed as bench.py times it. Not taken on a 1-core
    machine (there the decode shared its core with torch), when a figure is missing, nor when the decode's CPU
    time shows it shared its core (with --int8 the fp16 checks run beside calibration)."""
    cores = cores if cores is not None else bench_module().cpu_count()
    if cores < 2 or not isinstance(validation, dict):
        return {}
    found = {}
    for key in ("decode", "decode_int8"):
        decoded = validation.get(key)
        speed = decoded.get("speed") if isinstance(decoded, dict) and decoded.get("ok") else None
        if not isinstance(speed, dict) or speed.get("threads") != 1 or speed.get("model") not in MODELS:
            continue
        if any(not isinstance(speed.get(k), (int, float)) for k in ("rtf", "load_seconds", "peak_mb")):
            continue
        cpu, wall = speed.get("cpu_seconds"), speed.get("decode_seconds")
        if isinstance(cpu, (int, float)) and isinstance(wall, (int, float)) and wall > 0 and cpu < SHARED_CORE * wall:
            continue  # measured again, alone
        found[(speed["model"], 1)] = {**speed, "measured_in": "validate"}
    return found


def format_table(rows: list[dict]) -> str:
    return bench_module().table(rows)
