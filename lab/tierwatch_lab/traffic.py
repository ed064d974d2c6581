"""A bounded traffic generator for the demo: real user requests through the LBs, so the real-traffic
rules and dashboards (rules/traffic.rules.yml) have something to measure.

Bounded three ways: at most ``rate`` requests per second (never more, whatever the answers do), at
most ``max_in_flight`` at once (a slow backend lowers the rate instead of piling up requests), and
only to loopback or to networks the caller names (the demo's own VRRP bridge). ``stop()`` returns
within the request timeout.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections import Counter
from collections.abc import Sequence
from urllib.parse import urlsplit

import httpx

from .demo_stack import DemoStack

MAX_RATE = 200.0  # requests/s: a demo load, not a benchmark
MAX_IN_FLIGHT = 32

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class TrafficError(ValueError):
    """The generator was asked for something it does not do (a remote host, an unbounded rate)."""


def check_target(url: str, allowed_networks: Sequence[Network] = ()) -> None:
    """Refuse ``url`` unless its host is a loopback address (or ``localhost``) or lies in one of
    ``allowed_networks``."""
    host = urlsplit(url).hostname or ""
    if host == "localhost":
        return
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise TrafficError(f"{url}: the host must be a loopback IP address, got {host!r}") from None
    if address.is_loopback or any(address in network for network in allowed_networks):
        return
    raise TrafficError(f"{url}: {host} is neither loopback nor in an allowed network")


class TrafficGenerator:
    """GETs ``paths`` (in turn) of ``base_url`` at up to ``rate`` requests/s from ``max_in_flight``
    worker threads; counts answers by status class (``2xx``, ``5xx``, ``error`` for no answer)."""

    def __init__(
        self,
        base_url: str,
        rate: float = 10.0,
        paths: Sequence[str] = ("/work",),
        *,
        max_in_flight: int = 8,
        timeout: float = 2.0,
        allowed_networks: Sequence[Network] = (),
    ):
        check_target(base_url, allowed_networks)
        if not 0 < rate <= MAX_RATE:
            raise TrafficError(f"rate: expected more than 0 and at most {MAX_RATE:g} requests/s, got {rate}")
        if not 1 <= max_in_flight <= MAX_IN_FLIGHT:
            raise TrafficError(f"max_in_flight: expected 1 to {MAX_IN_FLIGHT}, got {max_in_flight}")
        if not paths or not all(p.startswith("/") for p in paths):
            raise TrafficError(f"paths: expected paths starting with '/', got {list(paths)!r}")
        self.base_url = base_url.rstrip("/")
        self.rate = rate
        self.paths = tuple(paths)
        self.timeout = timeout
        self.outcomes: Counter[str] = Counter()
        self._workers = [
            threading.Thread(target=self._work, name=f"traffic-{i}", daemon=True)
            for i in range(max_in_flight)
        ]
        self._halt = threading.Event()
        self._lock = threading.Lock()
        self._next_at = 0.0
        self._turn = 0

    @property
    def answered(self) -> int:
        """Requests done so far (answered or failed)."""
        with self._lock:
            return sum(self.outcomes.values())

    def start(self) -> TrafficGenerator:
        """Start the workers; returns self."""
        self._next_at = time.monotonic()
        for worker in self._workers:
            worker.start()
        return self

    def stop(self) -> None:
        """Stop sending; wait (at most the request timeout and a second) for requests in flight."""
        self._halt.set()
        deadline = time.monotonic() + self.timeout + 1.0
        for worker in self._workers:
            if worker.is_alive():
                worker.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> TrafficGenerator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _slot(self) -> tuple[float, str]:
        """The time this worker may send its next request, and the path: one slot every 1/rate s,
        never saved up while every worker was busy (no bursts after a slow spell)."""
        with self._lock:
            now = time.monotonic()
            self._next_at = max(self._next_at + 1.0 / self.rate, now)
            path = self.paths[self._turn % len(self.paths)]
            self._turn += 1
            return self._next_at, path

    def _work(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while not self._halt.is_set():
                at, path = self._slot()
                if self._halt.wait(max(0.0, at - time.monotonic())):
                    return
                try:
                    status = client.get(self.base_url + path).status_code
                    outcome = f"{status // 100}xx"
                except httpx.HTTPError:
                    outcome = "error"
                with self._lock:
                    self.outcomes[outcome] += 1


def demo_traffic(demo: DemoStack, rate: float = 10.0, paths: Sequence[str] = ("/work",)) -> TrafficGenerator:
    """A generator (not started) sending ``rate`` requests/s through the demo's VIP; with VRRP the
    VIP is on the demo's own bridge network, which is then the one network allowed."""
    allowed: list[Network] = []
    if demo.vrrp is not None:
        allowed.append(ipaddress.ip_network(f"{demo.vrrp.network.host_ip}/24", strict=False))
    base = demo.vip_url.removesuffix("/health")
    return TrafficGenerator(base, rate, paths, allowed_networks=allowed)
