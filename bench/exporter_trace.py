"""Run ``tierwatch`` with timing hooks, for bench/metrics_tail_bench.py: where does a slow ``/metrics``
go?

``python bench/exporter_trace.py TRACE serve --config ...`` runs the exporter as ``python -m tierwatch
serve ...`` would, and appends one JSON line per event to the file TRACE, stamped with
``time.monotonic()`` (CLOCK_MONOTONIC, the same clock in the bench's process):

- ``gc``: every collection of the cyclic garbage collector (``gc.callbacks``): generation, start,
  duration, objects collected;
- ``render``: ``ExporterApp.render_metrics`` (building the body), ``request``: the whole ``/metrics``
  answer (the render plus writing the body through uvicorn);
- ``round``: a probe round's end (``Monitor._finish_round``);
- ``lag``: with ``TW_TRACE_LAG=1``, the event loop late by more than 20 ms to wake a 10 ms sleep;
  ``stack``: then also, from a watchdog thread every 5 ms, the main thread's innermost frames while
  the loop has not ticked for 30 ms (only when the main thread lets the GIL go: not inside one C call,
  such as a collection);
- with ``TW_TRACE_GC=off``, no automatic collection at all (``gc.disable()``, an A/B of the
  collector's share; the exporter's own ``gc.collect()`` at start still runs);
- ``exit``: at exit, the collector's thresholds, the objects it tracks and the frozen ones.

The exporter's code is not changed; the hooks wrap its methods in this process only.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import os
import sys
import threading
import time
from typing import Any, TextIO

from tierwatch import cli, monitor, server

LAG_PERIOD = 0.010
LAG_REPORTED = 0.020
WATCHDOG_PERIOD = 0.005
WATCHDOG_STALE = 0.030


def install(out: TextIO) -> None:
    """Install every hook, writing to ``out``."""

    def emit(**event: Any) -> None:
        out.write(json.dumps(event) + "\n")

    gc_started = [0.0]
    counts = [(0, 0, 0)]

    def on_gc(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            counts[0] = gc.get_count()
            gc_started[0] = time.monotonic()
            return
        now = time.monotonic()
        emit(
            k="gc",
            gen=info["generation"],
            t=gc_started[0],
            d=now - gc_started[0],
            counts=counts[0],
            collected=info["collected"],
        )

    gc.callbacks.append(on_gc)

    render = server.ExporterApp.render_metrics

    def timed_render(self: server.ExporterApp, accept: str) -> Any:
        began = time.monotonic()
        result = render(self, accept)
        emit(k="render", t=began, d=time.monotonic() - began, version=self.monitor.version)
        return result

    server.ExporterApp.render_metrics = timed_render  # type: ignore[method-assign]

    call = server.ExporterApp.__call__

    async def timed_call(self: server.ExporterApp, scope: Any, receive: Any, send: Any) -> None:
        began = time.monotonic()
        await call(self, scope, receive, send)
        if scope.get("path") == "/metrics":
            emit(k="request", t=began, d=time.monotonic() - began)

    server.ExporterApp.__call__ = timed_call  # type: ignore[method-assign]

    finish = monitor.Monitor._finish_round

    def timed_finish(self: monitor.Monitor, started: float, overran: bool) -> None:
        finish(self, started, overran)
        emit(k="round", t=time.monotonic(), rounds=self.rounds)

    monitor.Monitor._finish_round = timed_finish  # type: ignore[method-assign]

    if os.environ.get("TW_TRACE_LAG") == "1":
        run = monitor.Monitor.run
        heartbeat = [time.monotonic()]
        main_thread = threading.get_ident()

        def watchdog() -> None:
            while True:
                time.sleep(WATCHDOG_PERIOD)
                now = time.monotonic()
                if now - heartbeat[0] < WATCHDOG_STALE:
                    continue
                frame = sys._current_frames().get(main_thread)
                frames = []
                while frame is not None and len(frames) < 12:
                    code = frame.f_code
                    frames.append(f"{code.co_filename.rsplit('/', 2)[-1]}:{frame.f_lineno} {code.co_name}")
                    frame = frame.f_back
                emit(k="stack", t=now, stale=now - heartbeat[0], frames=frames)

        threading.Thread(target=watchdog, name="trace-watchdog", daemon=True).start()

        async def run_with_lag(self: monitor.Monitor, stop: asyncio.Event) -> None:
            async def lag() -> None:
                while not stop.is_set():
                    began = heartbeat[0] = time.monotonic()
                    await asyncio.sleep(LAG_PERIOD)
                    late = time.monotonic() - began - LAG_PERIOD
                    if late > LAG_REPORTED:
                        emit(k="lag", t=began, d=late)

            watcher = asyncio.create_task(lag())
            try:
                await run(self, stop)
            finally:
                watcher.cancel()

        monitor.Monitor.run = run_with_lag  # type: ignore[method-assign]

    def at_exit() -> None:
        emit(
            k="exit",
            t=time.monotonic(),
            threshold=list(gc.get_threshold()),
            tracked=len(gc.get_objects()),
            frozen=gc.get_freeze_count(),
            stats=gc.get_stats(),
        )
        out.flush()

    atexit.register(at_exit)


def main() -> int:
    trace = open(sys.argv[1], "a", buffering=1)  # noqa: SIM115 - open for the process's life
    install(trace)
    if os.environ.get("TW_TRACE_GC") == "off":
        gc.disable()
    return cli.main(sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
