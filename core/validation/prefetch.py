"""Work started early in child processes (sherpa-ncnn decodes, the int8 cosine) so it overlaps the validation
process's own torch work, and collected later: a queued job the pool has not started yet runs in the collecting
thread instead (its core is free by then).

Every job passes a gate first: it starts only while the lanes in use (this thread's own work until
``run_queued_here``, and the children running) are fewer than the cores usable now. In a run, a background
validation is given one core (calibration runs beside it) and takes a second as soon as the runner says one came
free (core.common.cores.usable_cores_now), instead of leaving it idle until it ends."""
from __future__ import annotations

import threading

POLL_SECONDS = 0.2  # how often a job waiting at the gate reads the runner's file again

_PENDING: dict[tuple, object] = {}  # (what, out, ...) -> a Future started early
_POOL: dict[str, object] = {}  # "pool": the executor, for children started later
_WORK: dict[object, tuple] = {}  # a submitted Future -> (fn, args), so this thread can run it when still queued
_STOLEN: dict[object, object] = {}  # a cancelled (run here instead) Future -> the Future holding its result


_GATE = threading.Condition()
_IN_USE = {"main": 1, "children": 0, "jobs": 0, "waiting": 0}  # this thread's own work counts as a lane until done


def lanes(jobs: int | None = None) -> int:
    """How many things may run at once: ``jobs`` when given, else one per core this process may use (minus those
    the steps beside it use, as the runner said at its start; ``may_start`` follows them as they change)."""
    if jobs:
        return max(1, jobs)
    from core.common.cores import usable_cores
    return usable_cores()


def make_pool(jobs: int | None = None):
    """The executor for early children: one worker per lane left beside this thread's own work; None with a
    single lane (everything then runs here, one after another, when collected)."""
    from concurrent.futures import ThreadPoolExecutor

    from core.common.cores import all_cores, live
    n = lanes(jobs) if jobs or not live() else all_cores()  # in a run: as many as may come free (the gate decides)
    _IN_USE.update(main=1, children=0, jobs=jobs or 0, waiting=0)
    pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="validate-child") if n > 1 else None
    _POOL["pool"] = pool
    return pool


def start(key: tuple, fn, *args) -> None:
    """Start ``fn(*args)`` in the pool now (when there is one), to be picked up by ``collect(key, ...)``."""
    pool = _POOL.get("pool")
    if pool is not None:
        _PENDING[key] = submit(pool, fn, *args)


def submit(pool, fn, *args):
    future = pool.submit(gated, fn, *args)
    _WORK[future] = (fn, args)
    return future


def run_queued_here() -> None:
    """Run every child the pool has not started yet in this thread, oldest first (the torch work is done: its core
    is free), while the pool's workers finish theirs; their results are then waiting for the collectors."""
    from concurrent.futures import Future
    yield_lane()
    for future in list(_WORK):
        fn, args = _WORK.pop(future)
        if future.cancel():
            done: Future = Future()
            done.set_result(gated(fn, *args))
            for key, value in list(_PENDING.items()):
                if value is future:
                    _PENDING[key] = done
            _STOLEN[future] = done


def yield_lane() -> None:
    """This thread's own work is done, or paused until ``take_lane``: its lane is free for the children."""
    with _GATE:
        _IN_USE["main"] = 0
        _GATE.notify_all()


def take_lane() -> None:
    """This thread's own work starts (again): it waits for a lane like a job. Called after ``yield_lane``, the
    children started early go first when there is only one core for them and this thread (a background validation
    beside calibration: the sherpa-ncnn decode, then torch's)."""
    with _GATE:
        while _IN_USE["waiting"] or not may_start():  # the jobs waiting at the gate first
            _GATE.wait(POLL_SECONDS)
        _IN_USE["main"] = 1


def in_lanes(fns: list) -> list:
    """``fn()`` for each of ``fns`` in threads, each through the gate (as many at once as lanes are free, which
    may grow while they run); this thread's lane is lent to them meanwhile. The results in order; the first
    exception is raised here."""
    if len(fns) <= 1:
        return [fn() for fn in fns]
    from concurrent.futures import ThreadPoolExecutor

    from core.common.cores import all_cores
    yield_lane()
    try:
        with ThreadPoolExecutor(max_workers=min(len(fns), all_cores()), thread_name_prefix="validate-lane") as pool:
            outcomes = list(pool.map(gated, fns))
    finally:
        take_lane()
    for _value, exc, _seconds in outcomes:
        if exc is not None:
            raise exc
    return [value for value, _exc, _seconds in outcomes]


def may_start() -> bool:
    """Is there a lane for one more job now? (``jobs`` when given, else the cores usable now.)"""
    from core.common.cores import usable_cores_now
    return _IN_USE["children"] + _IN_USE["main"] < (_IN_USE["jobs"] or usable_cores_now())


def gated(fn, *args):
    """``timed(fn, *args)`` once there is a lane for it (see the module's docstring)."""
    with _GATE:
        _IN_USE["waiting"] += 1
        while not may_start():
            _GATE.wait(POLL_SECONDS)
        _IN_USE["waiting"] -= 1
        _IN_USE["children"] += 1
    try:
        return timed(fn, *args)
    finally:
        with _GATE:
            _IN_USE["children"] -= 1
            _GATE.notify_all()


def timed(fn, *args):
    import time
    t0 = time.perf_counter()
    try:
        return fn(*args), None, time.perf_counter() - t0
    except Exception as exc:  # noqa: BLE001 - re-raised in the caller's thread, where it was always raised
        return None, exc, time.perf_counter() - t0


def result(future, fn, *args):
    """(result, exception, seconds) of a started child's future; when the pool has not started it yet (its workers
    are busy), this thread runs it instead of waiting: the torch work is done, so its core is free."""
    future = _STOLEN.pop(future, future)
    _WORK.pop(future, None)
    yield_lane()  # this thread now waits for the job or runs it: its own work is done
    if future is not None and not future.cancel():
        return future.result()
    return gated(fn, *args)


def collect(key: tuple, fn, *args, timings: dict | None = None, name: str = ""):
    """The prefetched result for ``key`` (waiting for it), else ``fn(*args)`` here; the seconds go to ``timings``."""
    future = _PENDING.pop(key, None)
    value, exc, seconds = result(future, fn, *args)
    if timings is not None and name:
        timings[name] = round(seconds, 3)
    if exc is not None:
        raise exc
    return value


def shutdown() -> None:
    pool = _POOL.pop("pool", None)
    if pool is not None:
        pool.shutdown()
