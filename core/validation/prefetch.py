"""Work started early in child processes (sherpa-ncnn decodes, the int8 cosine) so it overlaps the validation
process's own torch work, and collected later: a queued job the pool has not started yet runs in the collecting
thread instead (its core is free by then)."""
from __future__ import annotations

_PENDING: dict[tuple, object] = {}  # (what, out, ...) -> a Future started early
_POOL: dict[str, object] = {}  # "pool": the executor, for children started later
_WORK: dict[object, tuple] = {}  # a submitted Future -> (fn, args), so this thread can run it when still queued
_STOLEN: dict[object, object] = {}  # a cancelled (run here instead) Future -> the Future holding its result


def lanes(jobs: int | None = None) -> int:
    """How many things may run at once: ``jobs`` when given (the run gives 1 to a validation that runs beside
    other steps), else one per core this process may use (minus those background steps use)."""
    if jobs:
        return max(1, jobs)
    from core.common.cores import usable_cores
    return usable_cores()


def make_pool(jobs: int | None = None):
    """The executor for early children: one worker per lane left beside this thread's own work; None with a
    single lane (everything then runs here, one after another, when collected)."""
    from concurrent.futures import ThreadPoolExecutor
    n = lanes(jobs)
    pool = ThreadPoolExecutor(max_workers=n - 1, thread_name_prefix="validate-child") if n > 1 else None
    _POOL["pool"] = pool
    return pool


def start(key: tuple, fn, *args) -> None:
    """Start ``fn(*args)`` in the pool now (when there is one), to be picked up by ``collect(key, ...)``."""
    pool = _POOL.get("pool")
    if pool is not None:
        _PENDING[key] = submit(pool, fn, *args)


def submit(pool, fn, *args):
    future = pool.submit(timed, fn, *args)
    _WORK[future] = (fn, args)
    return future


def run_queued_here() -> None:
    """Run every child the pool has not started yet in this thread, oldest first (the torch work is done: its core
    is free), while the pool's workers finish theirs; their results are then waiting for the collectors."""
    from concurrent.futures import Future
    for future in list(_WORK):
        fn, args = _WORK.pop(future)
        if future.cancel():
            done: Future = Future()
            done.set_result(timed(fn, *args))
            for key, value in list(_PENDING.items()):
                if value is future:
                    _PENDING[key] = done
            _STOLEN[future] = done


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
    if future is not None and not future.cancel():
        return future.result()
    return timed(fn, *args)


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
