"""The demo's traffic generator (tierwatch_lab/traffic.py): loopback only, never faster than its rate, bounded
in flight against a slow server, and stops cleanly within its request timeout."""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from tierwatch_lab.traffic import TrafficError, TrafficGenerator, check_target


class Server:
    """A loopback HTTP server answering 200 (or 500 on /fail) after ``delay`` seconds; counts
    requests and the most it served at once."""

    def __init__(self, delay: float = 0.0):
        self.delay = delay
        self.count = 0
        self.in_flight = 0
        self.most_in_flight = 0
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with outer.lock:
                    outer.count += 1
                    outer.in_flight += 1
                    outer.most_in_flight = max(outer.most_in_flight, outer.in_flight)
                time.sleep(outer.delay)
                with outer.lock:
                    outer.in_flight -= 1
                self.send_response(500 if self.path == "/fail" else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"


@pytest.fixture
def server() -> Iterator[Server]:
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_refuses_what_is_not_loopback_or_allowed() -> None:
    for url in ("http://192.0.2.10:80", "http://example.com/", "http://[2001:db8::1]:80"):
        with pytest.raises(TrafficError, match="loopback"):
            TrafficGenerator(url)
    check_target("http://127.0.0.1:1")
    check_target("http://[::1]:1")
    check_target("http://localhost:1")
    check_target("http://10.213.7.100:8080", [ipaddress.ip_network("10.213.7.0/24")])
    with pytest.raises(TrafficError):
        check_target("http://10.213.8.100:8080", [ipaddress.ip_network("10.213.7.0/24")])
    for rate in (0, -1, 201):
        with pytest.raises(TrafficError, match="rate"):
            TrafficGenerator("http://127.0.0.1:1", rate)
    with pytest.raises(TrafficError, match="max_in_flight"):
        TrafficGenerator("http://127.0.0.1:1", max_in_flight=0)


def test_sends_at_its_rate_and_counts_outcomes(server: Server) -> None:
    generator = TrafficGenerator(server.url, rate=40, paths=("/ok", "/fail"))
    started = time.monotonic()
    with generator:
        time.sleep(2.0)
    elapsed = time.monotonic() - started
    # one request every 25 ms from the start: at most rate x elapsed (+1 for the first slot)
    assert server.count <= 40 * elapsed + 1
    assert server.count >= 40 * 2.0 * 0.7, server.count
    assert generator.outcomes["2xx"] > 0 and generator.outcomes["5xx"] > 0
    assert abs(generator.outcomes["2xx"] - generator.outcomes["5xx"]) <= 8  # paths in turn
    assert generator.answered == server.count


def test_slow_server_lowers_the_rate_instead_of_piling_up(server: Server) -> None:
    server.delay = 0.5
    generator = TrafficGenerator(server.url, rate=100, max_in_flight=4, timeout=2.0)
    with generator:
        time.sleep(2.0)
    assert server.most_in_flight <= 4
    # 4 workers x 2 s / 0.5 s per request: about 16, far below 100/s x 2 s
    assert 8 <= server.count <= 24, server.count


def test_stops_within_its_timeout_even_when_the_server_hangs(server: Server) -> None:
    server.delay = 30.0
    generator = TrafficGenerator(server.url, rate=10, max_in_flight=3, timeout=1.0).start()
    wait_until = time.monotonic() + 5
    while server.in_flight < 3 and time.monotonic() < wait_until:
        time.sleep(0.05)
    started = time.monotonic()
    generator.stop()
    assert time.monotonic() - started < 2.5
    assert not any(worker.is_alive() for worker in generator._workers)
    assert generator.outcomes["error"] >= 1
