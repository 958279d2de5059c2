"""Benchmark: a REAL child process floods the wizard's run screen with log lines.

Not a test. Run from the repository root:

    .venv/bin/python benchmarks/bench_tui_flood.py [--lines 150000] [--size 80x24] [--seconds 0]

The lines travel the whole way a step's output does (the synthetic-event benchmark it
replaced could not see the pipe, the reads or the step log): a one-step plan whose step is ``python -c`` printing
``--lines`` lines as fast as it can, run by core.pipeline.runner.Runner on the
App's loop (pipe, chunked reads, the step log on disk, LogLines events), into
RunModel and the run screen's Log widget. Each line carries the child's
CLOCK_MONOTONIC time when it was printed (one clock for every process on Linux).

Every 50 ms it reads the last line the log pane holds and records how old it
is (now minus its print time): how far behind the pane is. Meanwhile it
presses a key (``a``, "follow the running step") every 50 ms, posted to the App
as the terminal driver does, and records how long each took to reach its action.

Prints: the child's run time, the pane's lag (median, 95th percentile, worst;
target: the latest line within 0.5 s), the last line shown when the step ended,
and the key-press latency (target < 100 ms).
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textual import events  # noqa: E402

from core.pipeline.runner import Plan, Runner, Step  # noqa: E402
from tui.wizard.app import RunModel, WizardApp  # noqa: E402
from tui.wizard.run import RunScreen, StepLog  # noqa: E402

CHILD = ("import sys, time\n"
         "w = sys.stdout.write\n"
         "t0 = time.monotonic()\n"
         "for i in range({n}):\n"
         "    if {seconds} and i % 1000 == 0:\n"
         "        time.sleep(max(0.0, t0 + {seconds} * i / {n} - time.monotonic()))\n"
         "    w(f'{{time.monotonic():.6f}} flood line {{i}} pass_level3: inline module operand shape [1,39,80]f32\\n')\n")


def pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


async def bench(lines: int, size: tuple[int, int], seconds: float = 0.0) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        (out / "logs").mkdir(parents=True)
        step = Step("flood", "Flood the log", argv=[sys.executable, "-c", CHILD.format(n=lines, seconds=seconds)])
        plan = Plan([step], out)
        app = WizardApp()
        async with app.run_test(size=size) as pilot:
            app.run_model = model = RunModel(SimpleNamespace(out_dir=out, plan=plan))
            await app.push_screen(RunScreen())
            await pilot.pause(0.2)
            screen = app.screen
            log = screen.query_one("#log", StepLog)

            latencies: list[float] = []
            sent: list[float] = []
            original = screen.action_follow

            def follow() -> None:
                if sent:
                    latencies.append(time.perf_counter() - sent.pop(0))
                original()
            screen.action_follow = follow

            lags: list[float] = []
            done = asyncio.Event()

            async def watch() -> None:
                while not done.is_set():
                    await asyncio.sleep(0.05)
                    sent.append(time.perf_counter())
                    app.post_message(events.Key("a", "a"))
                    last = log.lines[-1] if log.line_count else ""
                    try:
                        lags.append(time.monotonic() - float(last.split(" ", 1)[0]))
                    except ValueError:
                        pass  # the "$ command" line, before the child's first line
            app.runner = Runner(plan, app.on_core_event)
            t0 = time.monotonic()
            watcher = asyncio.ensure_future(watch())
            status = await app.runner.run()
            ran = time.monotonic() - t0
            last_at_end = log.lines[-1] if log.line_count else ""
            await asyncio.sleep(0.3)  # what the pane shows shortly after
            last_after = log.lines[-1] if log.line_count else ""
            done.set()
            await watcher
            await pilot.pause(0.1)
            on_disk = (out / "logs" / "01-flood.log").read_text(encoding="utf-8").count("\n")
            return {"status": status, "ran": ran, "lags": lags, "latencies": latencies, "last_at_end": last_at_end,
                    "last_after": last_after, "on_disk": on_disk, "kept": len(model.steps[0].lines)}


def index(line: str) -> str:
    """The line number a flood line carries ("-" for another line)."""
    return line.split(" flood line ")[-1].split(" ")[0] if " flood line " in line else "-"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=150_000)
    parser.add_argument("--size", default="80x24")
    parser.add_argument("--seconds", type=float, default=0.0,
                        help="spread the lines over this long (0: as fast as the child can print)")
    args = parser.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    r = asyncio.run(bench(args.lines, (w, h), args.seconds))
    lags, lat = r["lags"], r["latencies"]
    worst_lag = max(lags) if lags else float("nan")
    worst_key = max(lat) * 1000 if lat else float("nan")
    print(f"child: {args.lines:,} lines through a real process, step {r['status']} in {r['ran']:.2f} s "
          f"({args.lines / r['ran']:,.0f} lines/s); {r['on_disk']:,} lines in the step log on disk")
    print(f"pane lag (age of its last line, sampled every 50 ms, {len(lags)} samples): median "
          f"{statistics.median(lags) * 1000 if lags else float('nan'):.0f} ms, p95 {pct(lags, 0.95) * 1000:.0f} ms, "
          f"worst {worst_lag * 1000:.0f} ms   target < 500 ms: {'ok' if worst_lag < 0.5 else 'MISSED'}")
    print(f"pane's last line when the step ended: line {index(r['last_at_end'])}; 0.3 s later: line "
          f"{index(r['last_after'])} (of {args.lines - 1})")
    print(f"key presses handled: {len(lat)}; latency median {statistics.median(lat) * 1000 if lat else 0:.1f} ms, "
          f"worst {worst_key:.1f} ms   target < 100 ms: {'ok' if worst_key < 100 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
