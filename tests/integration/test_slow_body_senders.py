"""Issue 21, item 8: clients that send a valid token and then trickle the request body, beside real
webhooks, against a real ``tierwatch recover`` with a small connection cap."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from tierwatch_lab.stack import Stack, free_port, wait_for

from helpers import metric_value
from recovery_fixtures import TOKEN, RecoveryProcess, alert, app_cluster, payload, start_recovery

LIMIT = 16  # recovery.max_connections: the slow senders alone fill every slot
BURSTS, PER_BURST = 5, 4  # Alertmanager flushing several groups at once, every second


class SlowBodySenders:
    """``count`` connections that each send a complete, authorized request head announcing a 4 KiB
    body, then one byte of it every ``interval`` seconds; each one the server closes or answers (408)
    is opened again, so together they keep trying to hold ``count`` slots."""

    HEAD = (
        "POST /webhook HTTP/1.1\r\nHost: tierwatch\r\nAuthorization: Bearer {token}\r\n"
        "Content-Type: application/json\r\nContent-Length: 4096\r\n\r\n{{"
    )

    def __init__(self, port: int, count: int, interval: float = 0.2):
        self.port, self.count, self.interval = port, count, interval
        self.sockets: list[socket.socket] = []
        self.reopened = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._trickle, daemon=True)

    def _open(self) -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        try:
            sock.sendall(self.HEAD.format(token=TOKEN).encode())
        except OSError:
            pass  # closed at once (over the limit): reopened on the next round
        return sock

    def _trickle(self) -> None:
        while not self._stop.wait(self.interval):
            for i, sock in enumerate(self.sockets):
                readable, _, _ = select.select([sock], [], [], 0)
                try:
                    if readable:  # an answer (408) or a close: this one no longer holds a slot
                        raise ConnectionError
                    sock.sendall(b" ")
                except OSError:
                    sock.close()
                    if self._stop.is_set():
                        return
                    self.sockets[i] = self._open()
                    self.reopened += 1

    def holding(self) -> int:
        """How many of the connections are still open and unanswered."""
        return sum(not select.select([s], [], [], 0)[0] for s in self.sockets)

    def __enter__(self) -> SlowBodySenders:
        try:
            for _ in range(self.count):
                self.sockets.append(self._open())
        except BaseException:
            self.__exit__()
            raise
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10)
        for sock in self.sockets:
            sock.close()


def alertmanager_webhook(service: RecoveryProcess, n: int) -> str:
    """POST one Alertmanager-size notification (about 3 KB, sent at once); its outcome, as text."""
    one = alert("SomethingElse", {"cluster": "web", "instance": f"host-{n}"})  # one fingerprint each
    one["annotations"]["description"] = "a runbook's worth of text " * 100
    body = payload(one)
    try:
        response = service.post(body, timeout=5)
    except httpx.HTTPError as exc:
        return f"{type(exc).__name__}: {exc}"
    return f"{response.status_code} {response.text.strip()}"


def test_slow_body_senders_do_not_keep_real_webhooks_out(stack: Stack) -> None:
    target = f"http://127.0.0.1:{free_port()}/health"
    service = start_recovery(stack, [app_cluster([("es-1", "primary", target)])], {"max_connections": LIMIT})
    port = int(service.url.rsplit(":", 1)[1])
    outcomes: list[str] = []
    opened = time.monotonic()
    with SlowBodySenders(port, LIMIT) as slow, ThreadPoolExecutor(PER_BURST) as pool:
        time.sleep(1.5)  # every slow sender is well into its body
        assert slow.holding() == LIMIT, "the slow senders did not get every slot"
        for burst in range(BURSTS):
            wait_for(lambda: slow.holding() == LIMIT, 2, "the slow senders back on every slot")
            last_burst = time.monotonic() - opened
            numbers = range(burst * PER_BURST, (burst + 1) * PER_BURST)
            outcomes += pool.map(lambda n: alertmanager_webhook(service, n), numbers)
            time.sleep(1.0)
        still_slow = slow.holding()
    recorded = json.dumps({"status": "recorded", "accepted": 1})
    through = sum(outcome == f"200 {recorded}" for outcome in outcomes)
    assert through == len(outcomes), (
        f"{through} of {len(outcomes)} real webhooks got through beside {LIMIT} slow body senders "
        f"{last_burst:.1f}s after they started: {sorted(set(outcomes) - {f'200 {recorded}'})}"
    )
    assert last_burst < 9  # before the first slow senders' own read timeout (10 s) could free a slot
    assert still_slow >= LIMIT - PER_BURST  # the slow senders kept pressing all along
    metrics = httpx.get(service.url + "/metrics", timeout=5).text
    evicted = metric_value(metrics, "tierwatch_recovery_connections_dropped_total", reason="evicted")
    assert evicted is not None and evicted >= BURSTS, metrics  # each burst met every slot taken
    assert metric_value(metrics, "tierwatch_recovery_notifications_total", result="accepted") == len(outcomes)
    service.stop()
