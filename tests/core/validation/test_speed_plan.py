"""The speed table's plan: validation's 1-thread decodes are reused, only what is missing is measured, more threads
on a bounded amount of audio (no sherpa-ncnn here: the choices alone)."""
from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from core.validation.speed import SHARED_CORE, first_seconds, known_rows, plan_measurements
from tests.paths import KIT, REPO


def _wav(path: Path, seconds: float) -> Path:
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.zeros(int(16000 * seconds), dtype="<i2").tobytes())
    return path


@pytest.fixture
def wavs(tmp_path):
    return [_wav(tmp_path / f"{i}.wav", s) for i, s in enumerate((1.5, 1.0, 1.5, 2.0, 1.2))]


def test_more_threads_decode_only_the_first_seconds_of_audio(wavs):
    assert first_seconds(wavs, 2.4) == wavs[:2]
    assert first_seconds(wavs, 2.5) == wavs[:2]  # 1.5 + 1.0 reaches 2.5
    assert first_seconds(wavs, 2.6) == wavs[:3]
    assert first_seconds(wavs, 0.1) == wavs[:1]  # at least one wav
    assert first_seconds(wavs, 100) == wavs
    assert first_seconds(wavs, None) == wavs


def test_only_the_pairs_without_a_known_row_are_measured(wavs):
    known = {("fp16", 1): {"model": "fp16"}, ("int8", 1): {"model": "int8"}}
    todo = plan_measurements(["fp16", "int8"], [1, 2], wavs, known, all_cores_seconds=2.5)
    assert [(m.model, m.threads) for m in todo] == [("fp16", 2), ("int8", 2)]
    assert all(m.wavs == wavs[:2] for m in todo)
    every = plan_measurements(["fp16"], [1, 4], wavs, {}, all_cores_seconds=2.5)
    assert [(m.model, m.threads, len(m.wavs)) for m in every] == [("fp16", 1, 5), ("fp16", 4, 2)]
    # the run's speed step measures a 1-thread row itself only when validation's could not stand: briefly too
    again = plan_measurements(["fp16"], [1, 4], wavs, {}, all_cores_seconds=2.5, single_seconds=2.5)
    assert [(m.model, m.threads, len(m.wavs)) for m in again] == [("fp16", 1, 2), ("fp16", 4, 2)]


def _validation(**speed):
    row = {"model": "fp16", "threads": 1, "rtf": 0.2, "load_seconds": 0.5, "peak_mb": 80.0,
           "first_result_seconds": 0.3, "audio_seconds": 7.2, **speed}
    return {"decode": {"ok": True, "model": "fp16", "results": [], "speed": row},
            "decode_int8": {"ok": True, "model": "int8", "results": [], "speed": {**row, "model": "int8"}}}


def test_validation_decodes_become_the_one_thread_rows():
    rows = known_rows(_validation(), cores=2)
    assert sorted(rows) == [("fp16", 1), ("int8", 1)]
    assert rows[("int8", 1)]["rtf"] == 0.2 and rows[("int8", 1)]["measured_in"] == "validate"


def test_validation_figures_are_not_taken_when_they_cannot_stand_for_the_model():
    assert known_rows(_validation(), cores=1) == {}  # the decode shared its only core with torch
    assert known_rows(_validation(peak_mb=None), cores=2) == {}  # a figure missing: measure it
    failed = _validation()
    failed["decode"]["ok"] = False
    assert sorted(known_rows(failed, cores=2)) == [("int8", 1)]
    assert known_rows({"decode": None}, cores=2) == {}
    assert known_rows([], cores=2) == {}
    # with --int8 the fp16 checks run beside calibration: a decode that got 70% of a core is measured again
    shared = _validation(decode_seconds=1.0, cpu_seconds=0.7)
    shared["decode_int8"]["speed"]["cpu_seconds"] = 0.97
    assert sorted(known_rows(shared, cores=2)) == [("int8", 1)]


def test_children_still_queued_run_in_the_validation_thread_once_torch_is_done():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from core.validation import prefetch as v
    pool = ThreadPoolExecutor(max_workers=1)
    started, gate, where = threading.Event(), threading.Event(), {}

    def busy():
        started.set()
        gate.wait(10)
        where["busy"] = threading.current_thread().name
        return "busy"

    def queued(x):
        where["queued"] = threading.current_thread().name
        return 2 * x

    v._PENDING[("busy",)] = v.submit(pool, busy)
    v._PENDING[("queued",)] = v.submit(pool, queued, 21)
    assert started.wait(10)
    v.run_queued_here()  # the only worker is busy: the queued one runs here instead of waiting behind it
    me = threading.current_thread().name
    assert where["queued"] == me
    gate.set()
    timings: dict = {}
    assert v.collect(("queued",), queued, 21, timings=timings, name="q") == 42 and "q" in timings
    assert v.collect(("busy",), busy) == "busy" and where["busy"] != me
    pool.shutdown()


def test_a_child_waits_for_a_free_core_and_takes_the_one_that_comes_free(tmp_path, monkeypatch):
    """In a run a background validation has one core (calibration beside it): its children wait while its own
    torch work holds that core, and start as soon as the runner's file says a second one came free."""
    import threading

    from core.common import cores
    from core.validation import prefetch
    running = tmp_path / ".running"
    monkeypatch.setattr(cores, "all_cores", lambda: 2)
    monkeypatch.setenv(cores.RUNNING_ENV, str(running))
    monkeypatch.setenv(cores.SLOT_ENV, "validate")
    cores.write_running(running, ["validate", "foreground"])
    assert prefetch.make_pool() is not None  # a worker for the core that may come free
    ran = threading.Event()
    prefetch.start(("job",), lambda: ran.set() or "done")
    assert not prefetch.may_start() and not ran.is_set()  # this thread's own work holds the only usable core
    cores.write_running(running, ["validate"])  # the foreground now waits for this step
    assert prefetch.may_start()
    assert ran.wait(10)  # started while this thread's own work still counts as a lane
    assert prefetch.collect(("job",), lambda: "not here") == "done"
    prefetch.shutdown()


def test_with_one_core_the_child_started_early_goes_before_this_threads_own_work(tmp_path, monkeypatch):
    """validate: the sherpa-ncnn decode (one job) runs before torch's work when they must share one core, so that
    torch's one-wav-per-call decodes are what is left when a second core comes free."""
    import threading

    from core.common import cores
    from core.validation import prefetch
    running = tmp_path / ".running"
    monkeypatch.setattr(cores, "all_cores", lambda: 2)
    monkeypatch.setenv(cores.RUNNING_ENV, str(running))
    monkeypatch.setenv(cores.SLOT_ENV, "validate")
    cores.write_running(running, ["validate", "foreground"])
    prefetch.make_pool()
    order, release = [], threading.Event()

    def decode():
        order.append("decode")
        release.wait(10)
        return "decoded"
    prefetch.start(("decode",), decode)
    for _ in range(500):  # the worker has taken the job and waits at the gate
        if prefetch._IN_USE["waiting"]:
            break
        threading.Event().wait(0.01)
    assert prefetch._IN_USE["waiting"] == 1 and order == []
    taker = threading.Thread(target=lambda: (prefetch.yield_lane(), prefetch.take_lane(), order.append("torch")))
    taker.start()
    for _ in range(500):
        if order:
            break
        threading.Event().wait(0.01)
    assert order == ["decode"]  # the waiting job got the only lane; this thread's work waits for it
    release.set()
    taker.join(10)
    assert order == ["decode", "torch"]
    assert prefetch.collect(("decode",), lambda: "not here") == "decoded"
    prefetch.shutdown()


def test_work_in_lanes_spreads_over_the_cores_that_come_free(tmp_path, monkeypatch):
    import threading

    from core.common import cores
    from core.validation import prefetch
    running = tmp_path / ".running"
    monkeypatch.setattr(cores, "all_cores", lambda: 2)
    monkeypatch.setenv(cores.RUNNING_ENV, str(running))
    monkeypatch.setenv(cores.SLOT_ENV, "validate")
    cores.write_running(running, ["validate", "foreground"])  # one core: one at a time
    prefetch.make_pool()
    both = threading.Barrier(2, timeout=10)
    started: list = []

    def job(i):
        started.append(i)
        if i < 2:
            both.wait()  # passes only when jobs 0 and 1 run at the same time
        return i * 10

    def free_a_core_when_one_started():
        for _ in range(1000):
            if started:
                cores.write_running(running, ["validate"])  # the foreground now waits: a second core
                return
            threading.Event().wait(0.01)
    threading.Thread(target=free_a_core_when_one_started).start()
    assert prefetch.in_lanes([lambda i=i: job(i) for i in range(3)]) == [0, 10, 20]
    assert prefetch._IN_USE["main"] == 1  # this thread has its lane back
    with pytest.raises(ValueError, match="boom"):
        prefetch.in_lanes([lambda: 1, lambda: (_ for _ in ()).throw(ValueError("boom"))])
    prefetch.shutdown()


# -- the real thing (slow): the kit's icefall LSTM through run --from-ncnn -------------------------------------------

KIT_LSTM = KIT / "lstm-2layer"
TEST_WAVS = sorted((REPO / "assets" / "demo" / "test_wavs").glob("*.wav"))


@pytest.fixture(scope="module")
def kit_run(tmp_path_factory):
    import os
    import subprocess
    import sys
    if not (KIT_LSTM / "traced").is_dir():
        pytest.skip("the icefall kit is absent")
    out = tmp_path_factory.mktemp("kit-speed") / "out"
    flags = (KIT_LSTM / "export-flags.txt").read_text().split()
    proc = subprocess.run([sys.executable, "-m", "tui.cli.main", "run", "--from-ncnn", str(KIT_LSTM), "--arch", "lstm",
                           *flags, "--traced-dir", str(KIT_LSTM / "traced"),
                           *(a for w in TEST_WAVS for a in ("--wav", str(w))), "--out", str(out)],
                          cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
                          env=dict(os.environ, PYTHONPATH=str(REPO)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out


@pytest.mark.slow
def test_one_recognizer_with_a_fresh_stream_per_wav_decodes_like_a_fresh_recognizer(kit_run):
    from core.validation.decoding import decode
    together = decode(kit_run, TEST_WAVS, {})
    assert together.ok, together.error
    alone = [decode(kit_run, [w], {}).results[0]["tokens"] for w in TEST_WAVS[:3]]
    assert [r["tokens"] for r in together.results[:3]] == alone
    assert sum(map(len, alone)) >= 3  # something was decoded
    speed = together.speed
    assert speed["threads"] == 1 and speed["rtf"] > 0 and speed["load_seconds"] > 0 and 5 < speed["peak_mb"] < 500
    seconds = 0.0
    for w in TEST_WAVS:
        with wave.open(str(w)) as f:
            seconds += f.getnframes() / f.getframerate()
    assert speed["audio_seconds"] == pytest.approx(seconds, abs=0.01)


@pytest.mark.slow
def test_the_speed_table_takes_the_validation_decode_and_measures_only_more_threads(kit_run):
    import json
    rows = json.loads((kit_run / "speed.json").read_text())["rows"]
    validation = json.loads((kit_run / "validation.json").read_text())
    one = next(r for r in rows if r["threads"] == 1)
    decoded = validation["decode"]["speed"]
    had_its_core = decoded["cpu_seconds"] >= SHARED_CORE * decoded["decode_seconds"]
    # Whether the validation's decode had a core to itself depends on the machine's load at that moment (CI runs
    # two test workers): taken when it had, measured again by the speed step when it had not.
    more = [r for r in rows if r["threads"] > 1]
    assert more and all(r["measured_in"] == "speed" and r["rtf"] > 0 and r["audio_seconds"] < decoded["audio_seconds"]
                        for r in more), rows  # the first wavs holding ALL_CORES_AUDIO_SECONDS, not every wav
    if had_its_core:
        assert one["measured_in"] == "validate" and one["rtf"] == decoded["rtf"]
    else:  # measured again on the same first wavs as the rows with more threads
        assert one["measured_in"] == "speed" and one["audio_seconds"] == more[0]["audio_seconds"], rows
