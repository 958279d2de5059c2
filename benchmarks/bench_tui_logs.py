"""Benchmark: a flood of log lines through the wizard's run screen.

Not a test. Run from the repository root:

    .venv/bin/python benchmarks/bench_tui_logs.py [--lines 200000] [--batch 500] [--size 100x32]

It opens the Textual wizard headless (App.run_test) on the bundled Zipformer
demo's plan, shows the run screen and feeds it ``--lines`` lines as core
``LogLines`` events of ``--batch`` lines each, the way the Runner sends them
(on the App's event loop, yielding to the loop between batches as the runner
does between reads). Meanwhile it presses a key (``a``, "follow the running
step") every 50 ms, the way the terminal driver delivers keys (a Key event
posted to the App), and records how long each took to reach its action.

Prints: the time until the UI had drained every line (all fed, nothing
buffered, the log widget holding its last lines), the lines per second, and
the worst / median key-press latency. Targets: drained in under 10 s, every
key press handled in under 100 ms.
"""
from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from textual import events  # noqa: E402

from core.pipeline.demo import demo_config  # noqa: E402
from core.pipeline.events import LogLines, StepStarted  # noqa: E402
from tui.wizard.app import RunModel, WizardApp  # noqa: E402
from tui.wizard.run import LOG_WIDGET_LINES, RunScreen, StepLog  # noqa: E402


async def bench(lines: int, batch: int, size: tuple[int, int]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        config = demo_config("zipformer")
        config.output.dir = str(Path(tmp) / "out")
        app = WizardApp(config=config)
        async with app.run_test(size=size) as pilot:
            planned = app.plan()
            app.run_model = model = RunModel(planned)
            await app.push_screen(RunScreen())
            await pilot.pause(0.2)
            screen = app.screen
            step = model.by_id["export"]
            app.on_core_event(StepStarted(step.id, step.index, len(model.steps), step.title, step.command))
            await pilot.pause(0.2)

            latencies: list[float] = []
            sent: list[float] = []
            original = screen.action_follow

            def follow() -> None:
                if sent:
                    latencies.append(time.perf_counter() - sent.pop(0))
                original()
            screen.action_follow = follow

            done = asyncio.Event()

            async def press_keys() -> None:
                while not done.is_set():
                    sent.append(time.perf_counter())
                    app.post_message(events.Key("a", "a"))
                    await asyncio.sleep(0.05)

            line = "pass_level3: inline module = zipformer_for_ncnn_export_only.FeedforwardModule " \
                   "operand %d shape [1,39,80]f32"
            t0 = time.perf_counter()
            presser = asyncio.ensure_future(press_keys())
            fed = 0
            while fed < lines:
                n = min(batch, lines - fed)
                app.on_core_event(LogLines("export", tuple(line % (fed + i) for i in range(n))))
                fed += n
                await asyncio.sleep(0)
            fed_at = time.perf_counter() - t0
            log = screen.query_one("#log", StepLog)
            want = min(lines, LOG_WIDGET_LINES)
            while model.pending or log.line_count < want or not log.lines[-1].endswith(str(lines - 1) + " shape [1,39,80]f32"):
                await asyncio.sleep(0.01)
            drained = time.perf_counter() - t0
            await asyncio.sleep(0.3)  # a few more key presses after the flood
            done.set()
            await presser
            await pilot.pause(0.2)
            return {"fed": fed_at, "drained": drained, "latencies": latencies, "widget_lines": log.line_count,
                    "kept": len(step.lines)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=500, help="lines per LogLines event")
    parser.add_argument("--size", default="100x32")
    args = parser.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    r = asyncio.run(bench(args.lines, args.batch, (w, h)))
    lat = sorted(r["latencies"])
    worst = lat[-1] * 1000 if lat else float("nan")
    median = statistics.median(lat) * 1000 if lat else float("nan")
    print(f"lines fed:            {args.lines:,} in batches of {args.batch} ({args.lines // args.batch:,} events)")
    print(f"all events handed in: {r['fed']:.2f} s")
    print(f"UI drained:           {r['drained']:.2f} s  ({args.lines / r['drained']:,.0f} lines/s)   "
          f"target < 10 s: {'ok' if r['drained'] < 10 else 'MISSED'}")
    print(f"key presses handled:  {len(lat)}; latency median {median:.1f} ms, worst {worst:.1f} ms   "
          f"target < 100 ms: {'ok' if worst < 100 else 'MISSED'}")
    print(f"log widget holds {r['widget_lines']:,} lines; the step keeps {r['kept']:,} in memory "
          "(the full log is in OUT/logs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
