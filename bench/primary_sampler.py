"""Which PostgreSQL servers act as primaries during a failover bench, sampled every ``SAMPLE`` s.

Two questions per server (superuser over its unix socket, which reaches a server in a network
namespace too):

- does it answer as a primary (``pg_is_in_recovery()`` false)?
- when it does, does it *acknowledge a write*: a commit into ``bench_ack_probe`` that returns within
  ``ACK_WAIT``? A primary whose synchronous standbys all follow another server takes the INSERT but
  never returns the commit: no client is told its write is safe, so no acknowledged write can be
  lost there. A probe that has not returned is left pending (never cancelled: PostgreSQL answers a
  cancelled synchronous-commit wait as committed, with a warning) and no other probe starts on that
  server until it returns; if it returns later, that is an acknowledgement at that time.

``two_primaries_seconds`` counts the time two servers answered as primaries; ``two_acking_seconds``
the time two servers acknowledged writes (each answer valid for 1 s at most). Timestamps are
``time.time()`` so they line up with the writer's (bench/patroni_bench.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg

SAMPLE = 0.1  # seconds between two samples of one server
ACK_WAIT = 0.5  # seconds a probe commit may take to count as acknowledged in its sample
VALID = 1.0  # seconds a sample speaks for

Samples = dict[str, list[tuple[float, bool | None]]]


class PrimarySampler(threading.Thread):
    """Polls each server and records when it answered as a primary and when it acknowledged a write."""

    def __init__(self, servers: dict[str, Callable[..., psycopg.Connection[Any]]]):
        super().__init__(daemon=True)
        self.servers = servers
        # (when, answered as primary); None: the sample could not be taken
        self.samples: Samples = {name: [] for name in servers}
        # (when, a probe commit returned); False: it did not within ACK_WAIT, or failed
        self.acks: Samples = {name: [] for name in servers}
        self._pending: dict[str, threading.Thread | None] = dict.fromkeys(servers)
        self._lock = threading.Lock()
        self._halt = threading.Event()
        self._threads = [threading.Thread(target=self._poll, args=(name,), daemon=True) for name in servers]

    def prepare(self) -> None:
        """Create the probe table on the primary (before the fault, so every replica has it)."""
        for connect in self.servers.values():
            with connect(timeout=5) as conn:
                row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                if row is not None and row[0] is False:
                    conn.execute("CREATE TABLE IF NOT EXISTS bench_ack_probe (at timestamptz DEFAULT now())")
                    return
        raise RuntimeError("no primary to create the probe table on")

    def run(self) -> None:
        for thread in self._threads:
            thread.start()
        for thread in self._threads:
            thread.join()

    def _poll(self, name: str) -> None:
        connect = self.servers[name]
        while not self._halt.is_set():
            at = time.time()
            primary: bool | None
            try:
                with connect(timeout=1) as conn:
                    row = conn.execute("SELECT pg_is_in_recovery()").fetchone()
                primary = row is not None and row[0] is False
            except psycopg.Error:
                primary = None
            self.samples[name].append((at, primary))
            if primary:
                self._probe(name, at)
            self._halt.wait(SAMPLE)

    def _probe(self, name: str, at: float) -> None:
        """One probe commit, unless one is still pending on ``name``."""
        pending = self._pending[name]
        if pending is not None and pending.is_alive():
            self._record(name, at, False)
            return
        done = threading.Event()

        def write() -> None:
            try:
                with self.servers[name](timeout=1) as conn:  # autocommit
                    conn.execute("INSERT INTO bench_ack_probe DEFAULT VALUES")
                acked = True
            except psycopg.Error:
                acked = False
            if acked or not done.is_set():
                self._record(name, time.time(), acked)
            done.set()

        thread = threading.Thread(target=write, daemon=True)
        self._pending[name] = thread
        thread.start()
        if not thread.join(ACK_WAIT) and thread.is_alive():
            done.set()
            self._record(name, at, False)

    def _record(self, name: str, at: float, acked: bool) -> None:
        with self._lock:
            self.acks[name].append((at, acked))

    def stop(self) -> None:
        self._halt.set()
        self.join(10)  # pending probes are left to the servers' stop

    def two_primaries_seconds(self, since: float, until: float) -> float:
        """Seconds in [since, until] during which two or more servers answered as primaries."""
        return _overlap(self.samples, since, until)

    def two_acking_seconds(self, since: float, until: float) -> float:
        """Seconds in [since, until] during which two or more servers acknowledged writes."""
        with self._lock:
            acks = {name: sorted(samples) for name, samples in self.acks.items()}
        return _overlap(acks, since, until)

    def unasked_seconds(self, since: float, until: float) -> dict[str, float]:
        """Per server, the seconds in [since, until] covered by samples that could not be taken (each
        until the next sample, 1 s at most)."""
        unasked: dict[str, float] = {}
        for name, samples in self.samples.items():
            total = 0.0
            for (at, primary), following in zip(samples, [*samples[1:], (until, None)], strict=True):
                if primary is None and since <= at <= until:
                    total += min(following[0], until, at + VALID) - at
            unasked[name] = round(total, 1)
        return unasked


def _overlap(samples: Samples, since: float, until: float) -> float:
    """Seconds in [since, until] during which two or more servers' latest sample (at most ``VALID``
    old) was true."""
    total, t = 0.0, since
    while t < until:
        count = 0
        for series in samples.values():
            latest = next((s for s in reversed(series) if s[0] <= t), None)
            if latest is not None and latest[1] and t - latest[0] <= VALID:
                count += 1
        if count >= 2:
            total += SAMPLE
        t += SAMPLE
    return round(total, 1)
