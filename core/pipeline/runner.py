"""Execute a plan: subprocess and in-process steps, events, logs, cancel, resume.

Process steps run with stderr merged into stdout in a new session (so cancel
can stop the whole process group); their output is read in chunks, split on
``\\n`` and ``\\r``, cleaned of ANSI codes, decoded leniently, written in full to
``logs/NN-step.log`` and passed on in batches as :class:`LogLines`.

A step fails when it exits non-zero *or* an expected output is missing or
empty. ``run-state.json`` records each finished step's inputs and outputs
(size + sha256) so ``resume`` reruns exactly the steps whose files changed.
"""
from __future__ import annotations

import asyncio
import codecs
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from core.common.atomic import WriteError, atomic_write_bytes, sweep_temp_files
from core.common.cores import BUSY_ENV, FOREGROUND, RUNNING_ENV, SLOT_ENV, write_running
from core.common.hints import hint_for
from core.common.locks import LockError, RunLock
from core.pipeline.events import LogLines, Progress, RunFinished, StepFinished, StepStarted
from core.pipeline.progress import PARSERS
from core.pipeline.usage import InProcessUsage, read_usage, wrap_argv

ANSI_RE = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07]*\x07|\x1b[@-Z\\-_]")
TAIL_LINES = 30
STATE_FILE = "run-state.json"
KILL_GRACE_SECONDS = 1.5


class StepCancelled(Exception):
    """Raised inside an in-process step when the user cancelled."""


class StepError(Exception):
    """An in-process step failed; the message is shown to the user as is."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.hint = hint


@dataclass
class StepContext:
    """What an in-process step gets: logging, progress and the cancel flag."""

    step_id: str
    out_dir: Path
    _emit_log: Callable[[str], None]
    _emit_progress: Callable[[float | None, float | None, str], None]
    _cancelled: threading.Event

    def log(self, line: str) -> None:
        self._emit_log(line)

    def progress(self, done: float | None, total: float | None, note: str = "") -> None:
        self._emit_progress(done, total, note)

    def check_cancelled(self) -> None:
        if self._cancelled.is_set():
            raise StepCancelled()


@dataclass
class Step:
    id: str
    title: str
    argv: list[str] | None = None  # a process step
    func: Callable[[StepContext], None] | None = None  # an in-process step (runs in a thread)
    cwd: Path | None = None
    env: dict[str, str] = field(default_factory=dict)  # added to the environment
    inputs: list[Path] = field(default_factory=list)
    outputs: list[Path] = field(default_factory=list)
    parser: str | None = None  # name in core.pipeline.progress.PARSERS
    describe: str = ""  # one line for --dry-run when there is no argv
    script: list[str] = field(default_factory=list)  # the same step as shell lines, for export.sh
    fingerprint_extra: str = ""  # what else, besides argv, decides the step's result
    before: Callable[[], None] | None = None  # a process step's preparation (may raise StepError)
    verify: Callable[[list[str]], str | None] | None = None  # judges a tool whose exit code lies: its log -> error
    # runs beside the steps after it (its own core), up to the first step that ``needs`` it or the run's end: work
    # that only reads earlier steps' files (e.g. the fp16 validation while the int8 steps convert and calibrate)
    background: bool = False
    needs: tuple[str, ...] = ()  # background steps that must have finished, ok, before this step starts

    @property
    def command(self) -> str | None:
        return shlex.join(self.argv) if self.argv else None

    def fingerprint(self) -> str:
        blob = json.dumps([self.id, self.argv, sorted(self.env.items()), self.fingerprint_extra,
                           [str(p) for p in self.outputs]])
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class Plan:
    steps: list[Step]
    out_dir: Path
    manifest: dict = field(default_factory=dict)  # config, tools: merged into manifest.json


def digest(path: Path, cache: dict | None = None) -> dict | None:
    """Size and sha256 of a file (None when it does not exist); cached by size and mtime."""
    try:
        st = path.stat()
    except OSError:
        return None
    if path.is_dir():
        return {"size": 0, "sha256": "directory"}
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)  # links share their target's entry
    if cache is not None and key in cache:
        return cache[key]
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    result = {"size": st.st_size, "sha256": h.hexdigest()}
    if cache is not None:
        cache[key] = result
    return result


class LineSplitter:
    """Bytes in, clean text lines out: handles \\r progress, ANSI codes and bad UTF-8."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial = ""

    def feed(self, data: bytes) -> list[str]:
        text = self._partial + self._decoder.decode(data)
        parts = re.split(r"\r\n|\n|\r", text)
        self._partial = parts.pop()
        return [ANSI_RE.sub("", p) for p in parts]

    def flush(self) -> list[str]:
        text = self._partial + self._decoder.decode(b"", final=True)
        self._partial = ""
        return [ANSI_RE.sub("", text)] if text else []


def disk_error_message(exc: OSError, out: Path) -> str:
    """A sentence for an OSError while writing the run directory: which file, how much space is left, what to do."""
    import errno
    where = exc.filename or out
    if exc.errno == errno.ENOSPC:
        try:
            free = shutil.disk_usage(out if out.exists() else out.parent).free
            left = f" ({free:,} bytes free)"
        except OSError:
            left = ""
        return (f"{where}: the disk is full{left}; free some space, then run again with --resume "
                "(finished steps are kept)")
    return f"{where}: cannot be written ({exc.strerror}); check the output directory, then run again with --resume"


class Runner:
    """Runs a plan's steps in order and reports everything through ``on_event``."""

    def __init__(self, plan: Plan, on_event: Callable[[object], None], *, resume: bool = False):
        self.plan = plan
        self.on_event = on_event
        self.resume = resume
        self._cancel = threading.Event()
        self._procs: set = set()  # the running steps' processes (a background step's beside the current one)
        self._records: list = []  # run-state records still hashing
        self._running: dict[str, bool] = {}  # step id -> running now
        self._fg_busy = False  # the foreground is running its steps (not waiting for background ones, not done)
        self._meters: set = set()  # in-process steps' usage meters, while they measure
        self._hash_cache: dict = {}
        self.results: dict[str, StepFinished] = {}
        self._usage: dict[str, dict] = {}  # step id -> cpu_seconds, peak_mb (core.pipeline.usage)

    # -- public --------------------------------------------------------------
    def cancel(self) -> None:
        """Stop the running step (its whole process group) and everything after it."""
        self._cancel.set()
        for proc in list(self._procs):
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGTERM)

    @property
    def cancelled(self) -> bool:
        return self._cancel.is_set()

    async def run(self) -> str:
        started = time.monotonic()
        out = self.plan.out_dir
        lock = RunLock(out, command=shlex.join(sys.argv[:8]))
        try:
            lock.acquire()
        except (LockError, OSError) as exc:
            message = str(exc) if isinstance(exc, LockError) else f"{out}: cannot be used ({exc.strerror})"
            self.on_event(RunFinished("failed", 0.0, str(out), error=message))
            return "failed"
        try:
            return await self._run_locked(started, out)
        finally:
            lock.release()

    async def _run_locked(self, started: float, out: Path) -> str:
        (out / "logs").mkdir(parents=True, exist_ok=True)
        for note in sweep_temp_files(out) + [n for d in {p.parent for s in self.plan.steps for p in s.outputs}
                                             if d != out for n in sweep_temp_files(d)]:
            self.on_event(LogLines(self.plan.steps[0].id if self.plan.steps else "run", (f"[cleanup] {note}",)))
        state = self._load_state() if self.resume else {"version": 1, "steps": {}}
        status = "ok"
        total = len(self.plan.steps)
        background: dict[str, asyncio.Task] = {}  # step id -> its task, while it may still run
        self._records: list[asyncio.Task] = []
        self._fg_busy = True
        for index, step in enumerate(self.plan.steps, start=1):
            if not step.background:  # a background step waits for its needs in its own task
                for need in step.needs:  # the background work this step reads
                    if need in background:
                        self._publish_running(fg_busy=False)  # its core is free for the background steps
                        await background.pop(need)
                self._publish_running(fg_busy=True)
            stopped = self._stopped_by()
            if self.cancelled or stopped:
                status = "cancelled" if self.cancelled else stopped
                break
            if self.resume and self._up_to_date(step, state["steps"].get(step.id)):
                finished = StepFinished(step.id, "skipped", 0.0, tuple(map(str, step.outputs)))
                self.results[step.id] = finished
                self.on_event(StepStarted(step.id, index, total, step.title, step.command))
                self.on_event(finished)
                continue
            state["steps"].pop(step.id, None)
            self._save_state(state)
            if step.background:
                waits = [background[n] for n in step.needs if n in background]
                if not waits:  # it starts now (the next step starts before its task does)
                    self._running[step.id] = True
                    self._publish_running()
                    self.on_event(StepStarted(step.id, index, total, step.title, step.command, True))
                background[step.id] = asyncio.ensure_future(self._start_in_background(step, index, total, state,
                                                                                      waits))
                continue
            self.on_event(StepStarted(step.id, index, total, step.title, step.command, step.background))
            finished = await self._run_and_record(step, index, state)
            if finished.status != "ok":
                status = finished.status
                break
        self._publish_running(fg_busy=False)
        for task in background.values():  # a failure or a cancel stops the run at a step boundary
            await task
        (out / "logs" / RUNNING_FILE).unlink(missing_ok=True)
        if status == "ok":
            status = self._stopped_by() or status
        if self._records:
            await asyncio.gather(*self._records)
        seconds = time.monotonic() - started
        try:
            self._write_manifest(status, seconds, state)
        except (OSError, WriteError) as exc:
            message = disk_error_message(exc, out) if isinstance(exc, OSError) else str(exc)
            self.on_event(RunFinished("failed", seconds, str(out), error=f"the manifest was not written: {message}"))
            return "failed"
        self.on_event(RunFinished(status, seconds, str(out)))
        return status

    def _publish_running(self, fg_busy: bool | None = None) -> None:
        """logs/.running: the background steps running now and whether the foreground is busy; a long background
        step reads it (core.common.cores.usable_cores_now) to take a core that came free."""
        if fg_busy is not None:
            self._fg_busy = fg_busy
        entries = [s.id for s in self.plan.steps if s.background and self._running.get(s.id)]
        try:
            write_running(self.plan.out_dir / "logs" / RUNNING_FILE, entries + ([FOREGROUND] if self._fg_busy else []))
        except OSError:
            pass  # then the background steps keep the cores they were given at their start

    def _stopped_by(self) -> str | None:
        """'failed' or 'cancelled' when a background step that finished did not end ok (the run stops there)."""
        for step in self.plan.steps:
            finished = self.results.get(step.id) if step.background else None
            if finished is not None and finished.status not in ("ok", "skipped"):
                return "cancelled" if finished.status == "cancelled" else "failed"
        return None

    async def _start_in_background(self, step: Step, index: int, total: int, state: dict, waits: list
                                   ) -> StepFinished | None:
        """A background step: after the background steps it needs (without holding up the steps after it)."""
        if waits:
            for task in waits:
                await task
            if self.cancelled or self._stopped_by():
                return None
            self._running[step.id] = True
            self._publish_running()
            self.on_event(StepStarted(step.id, index, total, step.title, step.command, True))
        return await self._run_and_record(step, index, state)

    async def _run_and_record(self, step: Step, index: int, state: dict) -> StepFinished:
        """Run one step, report it, and record its inputs' and outputs' digests in run-state.json: the hashing (a
        second or more for a published model's weights) runs in a thread while the next step goes on."""
        self._running[step.id] = True  # (already, when started in the background: before the next step)
        try:
            finished = await self._run_step(step, index)
        except OSError as exc:  # the log or an output directory could not be written (full disk, ...)
            finished = StepFinished(step.id, "failed", 0.0, error=disk_error_message(exc, self.plan.out_dir))
        finally:
            self._running.pop(step.id, None)
            if step.background:
                self._publish_running()
        self.results[step.id] = finished
        if finished.status == "ok":
            self._records.append(asyncio.ensure_future(self._record_ok(step, finished, state)))
        else:
            state["steps"][step.id] = {"status": finished.status, "error": finished.error}
            self._save_state(state)
        self.on_event(finished)
        return finished

    async def _record_ok(self, step: Step, finished: StepFinished, state: dict) -> None:
        def digests() -> dict:
            return {"inputs": {str(p): digest(p, self._hash_cache) for p in step.inputs},
                    "outputs": {str(p): digest(p, self._hash_cache) for p in step.outputs}}
        files = await asyncio.to_thread(digests)
        state["steps"][step.id] = {"status": "ok", "fingerprint": step.fingerprint(),
                                   "seconds": round(finished.seconds, 3), **files}
        self._save_state(state)

    # -- steps ---------------------------------------------------------------
    async def _run_step(self, step: Step, index: int) -> StepFinished:
        log_path = self.plan.out_dir / "logs" / f"{index:02d}-{step.id}.log"
        for p in step.outputs:  # a stale output must never pass for this run's
            if p.is_symlink() or p.is_file():
                p.unlink()
            p.parent.mkdir(parents=True, exist_ok=True)  # tools like pnnx do not create directories
        t0 = time.monotonic()
        tail: list[str] = []
        with open(log_path, "w", encoding="utf-8") as log:
            def record(lines: list[str]) -> None:
                if not lines:
                    return
                log.write("".join(line + "\n" for line in lines))
                tail.extend(lines)
                del tail[:-TAIL_LINES]
                self.on_event(LogLines(step.id, tuple(lines)))
            if step.command:  # shown at once: a child may print nothing for seconds (importing torch)
                log.write(f"$ {step.command}\n")
                self.on_event(LogLines(step.id, (f"$ {step.command}",)))
            try:
                if step.argv:
                    if step.before is not None:
                        step.before()
                    error = await self._run_process(step, record)
                    if error is None and step.verify is not None:
                        log.flush()
                        error = step.verify(log_path.read_text(encoding="utf-8", errors="replace").splitlines())
                        if error:
                            record([f"error: {error}"])
                else:
                    error = await self._run_function(step, record)
            except StepCancelled:
                error = "cancelled"
            except StepError as exc:
                record([f"error: {exc}"])
                return StepFinished(step.id, "failed", time.monotonic() - t0, error=str(exc),
                                    hint=exc.hint or hint_for(tail), tail=tuple(tail))
            if error is None:
                error = _missing_outputs(step)
                if error:
                    record([f"error: {error}"])
        seconds = time.monotonic() - t0
        if error == "cancelled" or (error and self.cancelled):
            return StepFinished(step.id, "cancelled", seconds, error="cancelled by the user", tail=tuple(tail))
        if error:
            return StepFinished(step.id, "failed", seconds, error=error, hint=hint_for(tail), tail=tuple(tail))
        return StepFinished(step.id, "ok", seconds, tuple(map(str, step.outputs)))

    async def _run_process(self, step: Step, record: Callable[[list[str]], None]) -> str | None:
        parser = PARSERS[step.parser]() if step.parser else None
        env = dict(os.environ)
        env.update(step.env)
        env.setdefault("PYTHONUNBUFFERED", "1")
        # the cores background steps beside this one keep busy (core.common.cores.usable_cores leaves them alone);
        # a background step leaves one to the steps that run beside it (on 2 cores: validation's children one
        # after another beside calibration, not three processes on two cores -- and its sherpa-ncnn decode then
        # gets a whole core, so the speed table can use its timing)
        env[BUSY_ENV] = str(sum(1 for s in self.plan.steps if s.background and s.id != step.id
                                and self._running.get(s.id)) + (1 if step.background else 0))
        env[RUNNING_ENV] = str(self.plan.out_dir / "logs" / RUNNING_FILE)
        env[SLOT_ENV] = step.id if step.background else FOREGROUND
        usage_file = self.plan.out_dir / "logs" / f".usage-{step.id}.json"
        usage_file.unlink(missing_ok=True)
        argv = wrap_argv(step.argv, step.cwd, usage_file)  # the child's own CPU time and peak RSS (os.wait4)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=step.cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except FileNotFoundError:
            return f"{step.argv[0]} was not found; check the path (or install it)"
        except PermissionError:
            return f"{step.argv[0]} is not executable"
        self._procs.add(proc)
        if self.cancelled:  # cancel arrived while starting
            _signal_group(proc.pid, signal.SIGTERM)
        if parser:
            self.on_event(Progress(step.id, 0, parser.total, "starting"))
        splitter = LineSplitter()
        killer = asyncio.ensure_future(self._kill_when_cancelled(proc))
        try:
            while True:
                data = await proc.stdout.read(65536)
                if not data:
                    break
                lines = splitter.feed(data)
                record(lines)
                if parser:
                    for line in lines:
                        hit = parser.feed(line)
                        if hit:
                            self.on_event(Progress(step.id, hit[0], parser.total, hit[1]))
            record(splitter.flush())
            rc = await proc.wait()
        except BaseException:  # the log could not be written (full disk) or we were interrupted: never leave it running
            if proc.returncode is None:
                _signal_group(proc.pid, signal.SIGKILL)
                await proc.wait()
            raise
        finally:
            killer.cancel()
            self._procs.discard(proc)
        usage = read_usage(usage_file)
        if usage is not None:
            rc = usage.pop("returncode", rc)
            self._usage[step.id] = usage
        for meter in list(self._meters):  # an in-process step measuring meanwhile must not count this process
            meter.foreign_finished((usage or {}).get("cpu_seconds"))
        if self.cancelled:
            return "cancelled"
        if rc != 0:
            return _describe_exit(rc)
        return None

    async def _kill_when_cancelled(self, proc) -> None:
        while not self._cancel.is_set():
            await asyncio.sleep(0.05)
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), KILL_GRACE_SECONDS)
        except asyncio.TimeoutError:
            _signal_group(proc.pid, signal.SIGKILL)

    async def _run_function(self, step: Step, record: Callable[[list[str]], None]) -> str | None:
        loop = asyncio.get_running_loop()

        def log(line: str) -> None:
            loop.call_soon_threadsafe(record, [ANSI_RE.sub("", line)])

        def progress(done, total, note):
            loop.call_soon_threadsafe(self.on_event, Progress(step.id, done, total, note))

        ctx = StepContext(step.id, self.plan.out_dir, log, progress, self._cancel)
        meter = InProcessUsage(lambda: {p.pid for p in list(self._procs)})
        self._meters.add(meter)
        try:
            await asyncio.to_thread(step.func, ctx)
        finally:
            self._meters.discard(meter)
            self._usage[step.id] = meter.stop()
        await asyncio.sleep(0)  # let queued log lines land before the step is reported
        return "cancelled" if self.cancelled else None

    # -- state ---------------------------------------------------------------
    def _up_to_date(self, step: Step, record: dict | None) -> bool:
        if not record or record.get("status") != "ok" or record.get("fingerprint") != step.fingerprint():
            return False
        for key, paths in (("inputs", step.inputs), ("outputs", step.outputs)):
            recorded = record.get(key, {})
            if set(recorded) != {str(p) for p in paths}:
                return False
            for p in paths:
                if digest(p, self._hash_cache) != recorded[str(p)]:
                    return False
        return True

    def _load_state(self) -> dict:
        try:
            state = json.loads((self.plan.out_dir / STATE_FILE).read_text())
            if isinstance(state, dict) and isinstance(state.get("steps"), dict):
                return state
        except (OSError, ValueError):
            pass
        return {"version": 1, "steps": {}}

    def _save_state(self, state: dict) -> None:
        try:
            atomic_write_bytes(self.plan.out_dir / STATE_FILE, json.dumps(state, indent=2).encode())
        except WriteError as exc:  # the run goes on; its steps fail by themselves if the disk is really full
            step = self.plan.steps[0].id if self.plan.steps else "run"
            self.on_event(LogLines(step, (f"warning: {exc}",)))

    def _write_manifest(self, status: str, seconds: float, state: dict) -> None:
        manifest = dict(self.plan.manifest)
        manifest["status"] = status
        manifest["seconds"] = round(seconds, 3)
        manifest["steps"] = [
            {"id": s.id, "title": s.title, "command": s.command,
             "status": self.results[s.id].status if s.id in self.results else "not run",
             "seconds": round(self.results[s.id].seconds, 3) if s.id in self.results else None,
             "error": self.results[s.id].error if s.id in self.results else None,
             **({"background": True} if s.background else {}),
             **self._usage.get(s.id, {}),
             "inputs": state["steps"].get(s.id, {}).get("inputs"),
             "outputs": state["steps"].get(s.id, {}).get("outputs")}
            for s in self.plan.steps
        ]
        summary = self.plan.out_dir / "summary.json"
        if summary.exists():
            try:
                manifest["summary"] = json.loads(summary.read_text())
            except ValueError:
                pass
        atomic_write_bytes(self.plan.out_dir / "manifest.json", json.dumps(manifest, indent=2, default=str).encode())


RUNNING_FILE = ".running"  # in logs/: what runs now (Runner._publish_running)


def _missing_outputs(step: Step) -> str | None:
    for p in step.outputs:
        if not p.exists():
            return f"expected output {p} was not written"
        if p.is_file() and p.stat().st_size == 0:
            return f"expected output {p} is empty"
    return None


def _describe_exit(rc: int) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        extra = " (a segmentation fault: the program crashed)" if name == "SIGSEGV" else ""
        return f"killed by {name}{extra}"
    return f"exited with code {rc}"


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
