"""Shared pieces of the side-by-side exporter benchmarks (http_bench.py, redis_bench.py, postgres_bench.py).

- Accounting of a process from /proc: CPU (utime+stime), peak RSS (VmHWM), new TCP connections.
- The measurement window (warm-up and measured intervals) and the driver process that plays Prometheus
  (its CPU not counted): the round schedule, the per-target driver of the Redis and PostgreSQL benches
  (``python bench/side_by_side.py --driver SPEC``), its start and its records.
- Reading tierwatch's /metrics (counters, series per target), result fields, the Markdown table of the
  Redis and PostgreSQL benches, the run's date, command and machine.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import http.client
import json
import math
import os
import re
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httptools
import httpx
from machine import LoadAverage, machine

from tierwatch_lab.stack import ManagedProcess, Stack, free_port, wait_for

CLK_TCK = os.sysconf("SC_CLK_TCK")
T = TypeVar("T")

# --------------------------------------------------------------------------- /proc accounting


def cpu_seconds(pid: int) -> float:
    """utime+stime of a process (all threads), in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def vm_hwm_mib(pid: int) -> float:
    """Peak resident set size (VmHWM) in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for pid {pid}")


def socket_inodes(pid: int) -> set[str]:
    """Inodes of the sockets a process holds open."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            link = os.readlink(fd)
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    return inodes


class NewConnections:
    """Counts the TCP connections a process opens to ``server_ports`` after it is created.

    Sockets are told apart by inode, read from /proc/<pid>/fd (a consistent view); /proc/net/tcp is
    only used to tell which new sockets go to a server port, and a socket it misses (the table is read
    in chunks while blackbox churns it) is looked up again at the next poll.
    """

    def __init__(self, pid: int, server_ports: set[int]):
        self.pid = pid
        self.server_ports = server_ports
        self.known = socket_inodes(pid)
        self.unclassified: set[str] = set()
        self.count = 0

    def poll(self) -> None:
        """Look at the process's sockets once more."""
        current = socket_inodes(self.pid)
        fresh = current - self.known
        self.known |= fresh
        self.unclassified = (self.unclassified | fresh) & current
        if not self.unclassified:
            return
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            cols = line.split()
            if cols[9] in self.unclassified:
                self.unclassified.discard(cols[9])
                self.count += int(cols[2].split(":")[1], 16) in self.server_ports

    def poll_until(self, deadline: float, every: float) -> None:
        """Poll every ``every`` seconds until ``deadline`` (epoch seconds)."""
        while time.time() < deadline:
            self.poll()
            time.sleep(every)


def timed(read: Callable[[], Any]) -> tuple[float, Any]:
    """``read()`` and the middle of the time it took (to match a counter with the driver's schedule)."""
    began = time.time()
    value = read()
    return (began + time.time()) / 2, value


# --------------------------------------------------------------------------- reading exporters


@dataclass
class Http:
    """A kept-alive HTTP/1.1 connection to 127.0.0.1:port (so reading stats opens no new connection)."""

    port: int

    def __post_init__(self) -> None:
        self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)

    def get(self, path: str) -> tuple[int, str]:
        """GET ``path``; reconnects once if the server closed the idle connection (uvicorn does)."""
        for attempt in (1, 2):
            try:
                self.conn.request("GET", path)
                response = self.conn.getresponse()
                return response.status, response.read().decode()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")


def metric_sum(text: str, name: str) -> float:
    """Sum of every sample of ``name`` in a Prometheus text exposition."""
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name)] in "{ ":
            total += float(line.rsplit(" ", 1)[1])
    return total


def tierwatch_counters(text: str) -> tuple[float, float, float]:
    """Probes performed, probes failed and late rounds so far, from a tierwatch /metrics body."""
    return (
        metric_sum(text, "tierwatch_probes_total"),
        metric_sum(text, "tierwatch_probe_failures_total"),
        metric_sum(text, "tierwatch_probe_round_overruns_total"),
    )


def failures_by_reason(text: str) -> dict[str, float]:
    """``tierwatch_probe_failures_total`` summed per ``reason`` label, from a /metrics body."""
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("tierwatch_probe_failures_total{"):
            match = re.search(r'reason="([^"]*)"', line)
            reason = match.group(1) if match else ""
            found[reason] = found.get(reason, 0.0) + float(line.rsplit(" ", 1)[1])
    return found


def series_per_target(text: str, names: list[str]) -> dict[str, float]:
    """Samples and bytes of a tierwatch exposition that carry each target's label: mean, min, max."""
    counts = dict.fromkeys(names, 0)
    sizes = dict.fromkeys(names, 0)
    for line in text.splitlines():
        if line.startswith("#") or 'target="' not in line:
            continue
        name = line.partition('target="')[2].partition('"')[0]
        if name in counts:
            counts[name] += 1
            sizes[name] += len(line) + 1
    values = list(counts.values())
    return {
        "mean": round(statistics.mean(values), 2),
        "min": min(values),
        "max": max(values),
        "bytes_mean": round(statistics.mean(sizes.values())),
    }


def exposition_series(text: str) -> int:
    """Sample lines of one exposition."""
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


def start_http_service(
    stack: Stack, name: str, argv: Callable[[int], list[str]], health: str, what: str
) -> tuple[ManagedProcess, int]:
    """Spawn ``argv(port)`` on a free port; wait (15 s) until GET ``health`` answers 200."""
    port = free_port()
    proc = stack.spawn(name, argv(port))

    def healthy() -> bool:
        proc.check_alive()
        return httpx.get(f"http://127.0.0.1:{port}{health}", timeout=2).status_code == 200

    wait_for(healthy, 15, what)
    return proc, port


def version(argv: list[str]) -> str:
    """First line of what ``argv`` (a ``--version`` call) prints, or ``unknown``."""
    out = subprocess.run(argv, capture_output=True, text=True, check=False)
    text = (out.stdout or out.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def tierwatch_config_head(interval: float) -> list[str]:
    """The first lines of a bench's tierwatch config, up to ``clusters:``."""
    return [
        "monitor:",
        f"  interval: {interval:g}s",
        f"  timeout: {min(2.0, interval * 0.8):g}s",
        "log: {level: warning}",
        "clusters:",
    ]


# --------------------------------------------------------------------------- window and driver


@dataclass(frozen=True)
class Window:
    """The driver starts at ``start``; ``warmup`` intervals later come ``rounds`` measured ones."""

    interval: float
    warmup: int
    rounds: int
    start: float

    @classmethod
    def from_now(cls, interval: float, duration: float, warmup: int) -> Window:
        """Start in 0.5 s; the measured window is ``duration`` rounded to whole intervals (at least one)."""
        return cls(interval, warmup, max(1, round(duration / interval)), time.time() + 0.5)

    @property
    def first(self) -> float:
        """Start of the measured window (epoch seconds)."""
        return self.start + self.warmup * self.interval

    @property
    def end(self) -> float:
        """End of the measured window (epoch seconds); the driver stops there."""
        return self.first + self.rounds * self.interval

    @property
    def seconds(self) -> float:
        """Length of the measured window."""
        return self.rounds * self.interval

    def holds(self, when: float) -> bool:
        """Whether a request scheduled at ``when`` is in the measured window."""
        return self.first <= when < self.end

    def driver_spec(self, out: Path, **extra: Any) -> dict[str, Any]:
        """The driver's spec: this schedule, ``extra``, and where it writes its records."""
        return {
            "interval": self.interval,
            "start": self.start,
            "first": self.first,
            "until": self.end,
            **extra,
            "out": str(out),
        }

    def announce(self, what: str) -> None:
        """Say on stderr what runs and for how long."""
        print(
            f"{what}, interval {self.interval:g}s; warm-up "
            f"{self.warmup * self.interval:g}s, window {self.seconds:g}s",
            file=sys.stderr,
        )

    def sleep_until_first(self) -> None:
        """Sleep until the measured window begins."""
        time.sleep(max(0.0, self.first - time.time()))

    def setup(self) -> dict[str, float]:
        """The schedule's fields of the results' ``setup``."""
        return {
            "interval_s": self.interval,
            "warmup_s": self.warmup * self.interval,
            "window_s": self.seconds,
        }


async def run_schedule(
    events: list[tuple[float, T]],
    start: float,
    until: float,
    interval: float,
    job: Callable[[float, T], Coroutine[Any, Any, None]],
) -> None:
    """Every ``interval`` from ``start`` until ``until``, start ``job(when, payload)`` at each event's
    offset into the round, in offset order; then wait for every job."""
    events = sorted(events, key=lambda e: e[0])
    pending: set[asyncio.Task[None]] = set()
    round_start = start
    while round_start < until:
        for offset, payload in events:
            when = round_start + offset
            if when >= until:
                break
            await asyncio.sleep(max(0.0, when - time.time()))
            task = asyncio.create_task(job(when, payload))
            pending.add(task)
            task.add_done_callback(pending.discard)
        round_start += interval
    await asyncio.gather(*pending)


class _Wire(asyncio.Protocol):
    """One kept-alive HTTP/1.1 connection carrying one request at a time, parsed by httptools (llhttp):
    a few tens of µs of CPU per request, where httpx spends about a millisecond."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.body: list[bytes] = []
        self.done: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as error:
            self._fail(ConnectionError(f"bad response: {error}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(ConnectionError("connection closed"))

    def _fail(self, error: Exception) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(error)

    def on_body(self, chunk: bytes) -> None:
        self.body.append(chunk)

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result((self.parser.get_status_code(), b"".join(self.body)))

    async def get(self, request: bytes) -> tuple[int, bytes]:
        assert self.transport is not None
        self.body = []
        self.done = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.done


class WirePool:
    """Kept-alive connections to one host:port, as many as the requests in flight need."""

    def __init__(self, host: str, port: int, headers: dict[str, str]):
        self.host, self.port = host, port
        extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.head = f" HTTP/1.1\r\nHost: {host}:{port}\r\nAccept-Encoding: identity\r\n{extra}\r\n"
        self.idle: list[_Wire] = []

    async def _connect(self) -> _Wire:
        _, conn = await asyncio.get_running_loop().create_connection(_Wire, self.host, self.port)
        return conn

    async def get(self, path: str) -> tuple[int, bytes]:
        """Status and body of ``GET path``; a reused connection the server closed meanwhile is
        replaced once (uvicorn drops idle ones after 5 s)."""
        request = f"GET {path}{self.head}".encode()
        for attempt in (1, 2):
            reused = bool(self.idle)
            conn = self.idle.pop() if reused else await self._connect()
            try:
                status, body = await conn.get(request)
            except ConnectionError:
                if conn.transport is not None:
                    conn.transport.close()
                if reused and attempt == 1:
                    continue
                raise
            except BaseException:
                if conn.transport is not None:
                    conn.transport.close()
                raise
            if conn.parser.should_keep_alive() and not conn.closed:
                self.idle.append(conn)
            elif conn.transport is not None:
                conn.transport.close()
            return status, body
        raise AssertionError("unreachable")


async def drive(spec: dict[str, Any]) -> dict[str, Any]:
    """One driver process's share of Prometheus's work: every interval, GET each URL of its slice
    (``spec['slice']`` = [k, processes]: URLs k, k + processes, ...) at that URL's own offset in the
    interval, and (driver 0) tierwatch's /metrics once; a scrape is good when its body holds
    ``spec['ok']``. Records each request's schedule, latency and outcome, and how late it left."""
    interval: float = spec["interval"]
    urls: list[str] = spec["urls"]
    k, processes = spec.get("slice", [0, 1])
    n = len(urls)
    headers: dict[str, str] = spec.get("headers", {})
    scrapes: list[tuple[float, float, bool]] = []  # (scheduled time, latency s, ok)
    tw_scrapes: list[tuple[float, float]] = []
    late: list[tuple[float, float]] = []  # (scheduled time, seconds late when the request left)
    sample_body = ""
    ok_marker = spec["ok"].encode()
    pools: dict[tuple[str, int], WirePool] = {}

    def where(url: str) -> tuple[WirePool, str]:
        parts = urlsplit(url)
        assert parts.hostname is not None and parts.port is not None
        key = (parts.hostname, parts.port)
        if key not in pools:
            pools[key] = WirePool(*key, headers)
        return pools[key], parts.path + (f"?{parts.query}" if parts.query else "")

    async def scrape(target: tuple[WirePool, str], when: float) -> None:
        nonlocal sample_body
        began = time.perf_counter()
        late.append((when, time.time() - when))
        try:
            async with asyncio.timeout(10.0):
                status, body = await target[0].get(target[1])
            ok = status == 200 and ok_marker in body
            if ok and not sample_body:
                sample_body = body.decode()
        except (OSError, TimeoutError):
            ok = False
        scrapes.append((when, time.perf_counter() - began, ok))

    async def scrape_tierwatch(when: float) -> None:
        began = time.perf_counter()
        late.append((when, time.time() - when))
        try:
            async with asyncio.timeout(10.0):
                status, _ = await tierwatch[0].get(tierwatch[1])
            ok = status == 200
        except (OSError, TimeoutError):
            ok = False
        tw_scrapes.append((when, time.perf_counter() - began) if ok else (when, -1.0))

    def job(when: float, target: tuple[WirePool, str] | None) -> Coroutine[Any, Any, None]:
        return scrape_tierwatch(when) if target is None else scrape(target, when)

    tierwatch = where(spec["tierwatch_metrics"]) if spec.get("tierwatch_metrics") else None
    events: list[tuple[float, tuple[WirePool, str] | None]] = []
    if tierwatch is not None and k == 0:
        events.append((interval / 2, None))
    offsets = [interval / 2 if spec.get("burst") else (i + 0.5) * interval / n for i in range(n)]
    events += [(offsets[i], where(urls[i])) for i in range(k, n, processes)]
    await run_schedule(events, spec["start"], spec["until"], interval, job)
    return {
        "scrapes": scrapes,
        "tierwatch_scrapes": tw_scrapes,
        "sample_body": sample_body,
        "late": [(round(w, 4), round(x, 4)) for w, x in late],
        "cpu_seconds": time.process_time(),
    }


def run_driver(
    spec_path: Path, driver: Callable[[dict[str, Any]], Coroutine[Any, Any, dict[str, Any]]] = drive
) -> None:
    """Entry point of a driver process: read the spec, run ``driver`` on it, write the records next to it."""
    spec = json.loads(spec_path.read_text())
    Path(spec["out"]).write_text(json.dumps(asyncio.run(driver(spec))))


@dataclass
class Drivers:
    """The driver processes of one run, each owning a slice of the URLs."""

    processes: list[ManagedProcess]
    outs: list[Path]
    first: float
    max_lag: float


def start_driver(
    stack: Stack, spec: dict[str, Any], script: Path | None = None, processes: int = 2, max_lag: float = 1.0
) -> Drivers:
    """Start ``processes`` driver processes (``script --driver``, by default this file's), process k
    owning URLs k, k + processes, ...; a run is valid only if none sent a request of the measured
    window more than ``max_lag`` seconds after its scheduled time."""
    procs, outs = [], []
    for k in range(processes):
        out = Path(f"{spec['out']}.{k}")
        spec_path = stack.path(f"driver-spec-{k}.json")
        spec_path.write_text(json.dumps({**spec, "slice": [k, processes], "out": str(out)}))
        argv = [sys.executable, str((script or Path(__file__)).resolve()), "--driver", str(spec_path)]
        procs.append(stack.spawn(f"driver-{k}", argv))
        outs.append(out)
    return Drivers(procs, outs, spec["first"], max_lag)


def _quantiles(values: list[float]) -> list[float]:
    """p50, p99 and max, rounded to the ms (empty: zeros)."""
    if not values:
        return [0.0, 0.0, 0.0]
    ordered = sorted(values)
    return [round(ordered[len(ordered) // 2], 3), round(percentile(ordered, 99), 3), round(ordered[-1], 3)]


def driver_records(drivers: Drivers, spec: dict[str, Any], timeout: float = 120) -> dict[str, Any]:
    """Wait for every driver (at most ``timeout`` s), merge their records and judge the run:
    ``valid`` is false, with ``invalid_reasons``, when a driver did not finish or fell behind by more
    than the bound in the measured window."""
    merged: dict[str, Any] = {"scrapes": [], "tierwatch_scrapes": [], "sample_body": "", "drivers": []}
    reasons: list[str] = []
    window_late: list[float] = []
    deadline = time.monotonic() + timeout
    for k, (proc, out) in enumerate(zip(drivers.processes, drivers.outs, strict=True)):
        assert proc.popen is not None
        try:
            code = proc.popen.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            reasons.append(f"driver {k} had not finished {timeout:g} s after the window (behind)")
            continue
        if code != 0:
            raise RuntimeError(f"driver {k} failed:\n{proc.log_tail()}")
        records = json.loads(out.read_text())
        merged["scrapes"] += records["scrapes"]
        merged["tierwatch_scrapes"] += records["tierwatch_scrapes"]
        merged["sample_body"] = merged["sample_body"] or records["sample_body"]
        late = [x for w, x in records["late"] if w >= drivers.first]
        window_late += late
        lag = _quantiles(late)
        merged["drivers"].append(
            {
                "requests_in_window": len(late),
                "late_p50_p99_max_s": lag,
                "cpu_seconds": records["cpu_seconds"],
            }
        )
        if lag[2] > drivers.max_lag:
            reasons.append(f"driver {k} sent a request {lag[2]:g} s late (bound {drivers.max_lag:g} s)")
    merged["driver_late_p50_p99_max_s"] = _quantiles(window_late)
    merged["driver_max_lag_bound_s"] = drivers.max_lag
    merged["valid"] = not reasons
    merged["invalid_reasons"] = reasons
    return merged


# --------------------------------------------------------------------------- results


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def cpu_fields(cpu: float, count: float, per: str, seconds: float | None = None) -> dict[str, float]:
    """``cpu_seconds``, ``cpu_ms_per_<per>`` over ``count`` and, with ``seconds``, ``cores``."""
    fields = {"cpu_seconds": round(cpu, 3), f"cpu_ms_per_{per}": round(1000 * cpu / count, 3)}
    if seconds is not None:
        fields["cores"] = round(cpu / seconds, 3)
    return fields


def tierwatch_fields(
    bodies: tuple[str, str],
    cpu: float,
    cpu_window: float,
    rss: float,
    new_connections: int,
    names: list[str],
    records: dict[str, Any],
) -> dict[str, Any]:
    """tierwatch's figures in a per-target bench, from its /metrics at the window's start and end:
    probes, CPU, cores over ``cpu_window`` seconds, peak RSS, failures, overruns, targets up, new
    connections, series per target (``names``), size and the driver's median scrape of /metrics."""
    body0, body1 = bodies
    count0, fail0, late0 = tierwatch_counters(body0)
    count1, fail1, late1 = tierwatch_counters(body1)
    before = failures_by_reason(body0)
    return {
        "probes": int(count1 - count0),
        **cpu_fields(cpu, count1 - count0, "probe", cpu_window),
        "peak_rss_mib": round(rss, 1),
        "probes_failed": int(fail1 - fail0),
        "probes_failed_by_reason": {
            reason: int(n - before.get(reason, 0))
            for reason, n in failures_by_reason(body1).items()
            if n - before.get(reason, 0)
        },
        "round_overruns": int(late1 - late0),
        "targets_up_at_end": int(metric_sum(body1, "tierwatch_up")),
        "new_connections": new_connections,
        "series_per_target": series_per_target(body1, names),
        "metrics_bytes": len(body1.encode()),
        "metrics_scrape_median_ms": round(
            1000 * statistics.median(s[1] for s in records["tierwatch_scrapes"]), 2
        ),
    }


def scrape_fields(scrapes: list[list[Any]], records: dict[str, Any]) -> dict[str, Any]:
    """Failures and latency of the per-target scrapes in the window, and how late the driver was."""
    return {
        "scrapes_failed": sum(1 for s in scrapes if not s[2]),
        "scrape_latency_median_ms": round(1000 * statistics.median(s[1] for s in scrapes), 2),
        "scrape_latency_p99_ms": round(1000 * percentile([s[1] for s in scrapes], 99), 2),
        "driver_late_p50_p99_max_s": [round(x, 3) for x in records["driver_late_p50_p99_max_s"]],
    }


def driver_fields(records: dict[str, Any]) -> dict[str, Any]:
    """How late the drivers sent their requests (all and per process) against the run's bound."""
    return {
        "late_p50_p99_max_s": records["driver_late_p50_p99_max_s"],
        "max_lag_bound_s": records["driver_max_lag_bound_s"],
        "per_process": records["drivers"],
    }


def add_driver_arguments(parser: argparse.ArgumentParser) -> None:
    """``--drivers`` and ``--max-lag``."""
    parser.add_argument(
        "--drivers", type=int, default=2, help="driver processes sharing the URLs (default 2)"
    )
    parser.add_argument(
        "--max-lag",
        type=float,
        default=1.0,
        help="a run is invalid if a driver sends a request of the window later than this, s (default 1)",
    )


def sample_fields(records: dict[str, Any]) -> dict[str, Any]:
    """Series and bytes of one good per-target scrape."""
    return {
        "series_per_target": exposition_series(records["sample_body"]),
        "bytes_per_target": len(records["sample_body"].encode()),
    }


def run_fields(script: str, load: LoadAverage | None = None) -> dict[str, Any]:
    """The results' ``date``, ``command`` (``script`` with this run's arguments), ``machine`` and
    ``load`` (CPU count, load average at the start given by ``load`` and now; now only if none)."""
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": "python " + shlex.join([script, *sys.argv[1:]]),
        "machine": machine(),
        "load": (load or LoadAverage()).fields(),
    }


def print_table(result: dict[str, Any], theirs: str, servers: str, rss: str, rss_ratio: str) -> None:
    """The results of a per-target exporter bench as a Markdown table on stdout: ``theirs`` is the
    other exporter's results key, ``servers`` what serves the targets, ``rss`` its peak RSS cell."""
    tw, them = result["results"]["tierwatch"], result["results"][theirs]
    setup, ratio = result["setup"], result[f"ratios_tierwatch_over_{theirs}"]
    print(
        f"{setup['targets']} targets on {setup['servers']} {servers}, every {setup['interval_s']:g}s, "
        f"window {setup['window_s']:g}s"
    )
    print(f"| | tierwatch | {theirs} | ratio |\n|---|---:|---:|---:|")
    print(f"| probes / scrapes | {tw['probes']} | {them['scrapes']} | |")
    cpu = f"{tw['cpu_ms_per_probe']} | {them['cpu_ms_per_scrape']} | {ratio['cpu_per_probe']}"
    print(f"| CPU ms per target | {cpu} |")
    print(f"| cores | {tw['cores']} | {them['cores']} | |")
    print(f"| peak RSS MiB | {tw['peak_rss_mib']} | {rss} | {ratio[rss_ratio]} |")
    print(f"| new connections | {tw['new_connections']} | {them['new_connections']} | |")
    series = tw["series_per_target"]
    print(
        f"| series per target | {series['mean']} | {them['series_per_target']} | "
        f"{ratio['series_per_target']} |"
    )
    print(f"| failed | {tw['probes_failed']} | {them['scrapes_failed']} | |")
    load = result["load"]
    print(f"load average {load['loadavg_start']} -> {load['loadavg_end']}; driver {result['driver']}")
    if not result["valid"]:
        print("INVALID run, no CPU ratio: " + "; ".join(result["invalid_reasons"]))


def argument_parser(doc: str | None) -> argparse.ArgumentParser:
    """A parser whose description is the bench's docstring, as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


def write_results(result: dict[str, Any], output: Path | None) -> None:
    """Write the results as JSON to ``output`` (if any) and say where."""
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=2) + "\n")
        print(f"written to {output}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The per-target driver process (started by the benches).")
    parser.add_argument("--driver", type=Path, required=True, help="the driver's spec (JSON)")
    run_driver(parser.parse_args().driver)
