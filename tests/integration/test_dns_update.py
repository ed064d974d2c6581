"""DNS updates against a real Knot DNS 3.2: RFC 2136 with TSIG and a compare-and-swap prerequisite.

kdig (knot-dnsutils) is the oracle for what the server holds, so a test does not trust the client it
checks. Also: a wrong key is refused and its secret shows nowhere; a stopped, frozen or hostile server
fails with the right kind within the timeout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import struct
import subprocess
import time
import traceback
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import dns.message
import dns.rcode
import dns.tsig
import pytest

from tierwatch.clients.dns_update import DnsError, TsigKey, query_rrset, replace_rrset
from tierwatch.config.secrets import Secret
from tierwatch.dns_text import canonical
from tierwatch_lab.stack import Stack, StackError, wait_for
from tierwatch_lab.stack.knot import KnotServer, start_knot

T = TypeVar("T")
ZONE = "tierwatch.test."
NAME = f"primary.main-db.{ZONE}"
OLD = "0 0 6379 node.tierwatch.test."
NEW = "0 0 6380 node.tierwatch.test."
TIMEOUT = 2.0
SLACK = 0.5  # scheduling on a busy 2-core machine


@pytest.fixture
def knot(stack: Stack) -> KnotServer:
    return start_knot(
        stack,
        records=[f"primary.main-db 5 IN SRV {OLD}", "alias 5 IN CNAME node"],
    )


def run(coro: Awaitable[T]) -> T:
    async def main() -> T:
        return await coro

    return asyncio.run(main())


def dig(server: KnotServer, name: str, rdtype: str) -> list[str]:
    """The answer section as kdig prints it (``name ttl class type rdata``), straight from the server."""
    done = subprocess.run(
        [
            "kdig",
            "@127.0.0.1",
            "-p",
            str(server.port),
            "+norecurse",
            "+noall",
            "+answer",
            "+tcp",
            rdtype,
            name,
        ],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    )
    return [" ".join(line.split()) for line in done.stdout.splitlines() if line.strip()]


def dig_values(server: KnotServer, name: str, rdtype: str) -> set[str]:
    return {line.split(" ", 4)[4] for line in dig(server, name, rdtype) if line.split(" ")[3] == rdtype}


def stopped(pid: int) -> bool:
    """True when every thread of ``pid`` is in the stopped state (``T``)."""
    states = []
    for stat in Path(f"/proc/{pid}/task").glob("*/stat"):
        states.append(stat.read_text().rsplit(")", 1)[1].split()[0])
    return bool(states) and all(state in ("T", "t") for state in states)


def failure(coro: Awaitable[object]) -> tuple[DnsError, float]:
    start = time.monotonic()
    with pytest.raises(DnsError) as caught:
        run(coro)
    return caught.value, time.monotonic() - start


def test_a_signed_update_replaces_the_record_and_the_answer_shows_it(knot: KnotServer) -> None:
    key = knot.tsig_key()
    assert run(query_rrset(knot.address(), NAME, "SRV", TIMEOUT)) == {OLD}
    serial = dig(knot, ZONE, "SOA")[0].split()[6]

    two = frozenset({NEW, "10 0 6381 node.tierwatch.test."})
    run(replace_rrset(knot.address(), ZONE, key, NAME, "SRV", 7, frozenset({OLD}), two, TIMEOUT))

    assert dig_values(knot, NAME, "SRV") == two
    assert {line.split()[1] for line in dig(knot, NAME, "SRV")} == {"7"}  # the new TTL
    assert int(dig(knot, ZONE, "SOA")[0].split()[6]) > int(serial)
    assert run(query_rrset(knot.address(), NAME, "SRV", TIMEOUT)) == two
    # and back to one value, the prerequisite being the two just written
    run(replace_rrset(knot.address(), ZONE, key, NAME, "SRV", 5, two, frozenset({OLD}), TIMEOUT))
    assert dig_values(knot, NAME, "SRV") == {OLD}


def test_the_prerequisite_refuses_to_overwrite_a_record_changed_by_hand(knot: KnotServer) -> None:
    by_hand = "0 0 7000 node.tierwatch.test."
    knot.set_rrset("primary.main-db", "SRV", [by_hand])
    assert dig_values(knot, NAME, "SRV") == {by_hand}

    error, _ = failure(
        replace_rrset(
            knot.address(), ZONE, knot.tsig_key(), NAME, "SRV", 5, frozenset({OLD}), frozenset({NEW}), TIMEOUT
        )
    )
    assert error.kind == "conflict" and str(error).startswith("conflict: NXRRSET")
    assert dig_values(knot, NAME, "SRV") == {by_hand}
    # a subset of what is there is not "exactly" either
    both = frozenset({by_hand, NEW})
    run(
        replace_rrset(
            knot.address(), ZONE, knot.tsig_key(), NAME, "SRV", 5, frozenset({by_hand}), both, TIMEOUT
        )
    )
    error, _ = failure(
        replace_rrset(
            knot.address(), ZONE, knot.tsig_key(), NAME, "SRV", 5, frozenset({NEW}), frozenset({OLD}), TIMEOUT
        )
    )
    assert error.kind == "conflict"
    # what the server holds reads back in canonical form, so it can be the next expectation
    held = run(query_rrset(knot.address(), NAME, "SRV", TIMEOUT))
    assert held == both
    run(replace_rrset(knot.address(), ZONE, knot.tsig_key(), NAME, "SRV", 5, held, frozenset({OLD}), TIMEOUT))
    assert dig_values(knot, NAME, "SRV") == {OLD}


def test_an_empty_expectation_creates_only_where_there_is_none(knot: KnotServer) -> None:
    key = knot.tsig_key()
    name = f"replica.main-db.{ZONE}"
    run(replace_rrset(knot.address(), ZONE, key, name, "SRV", 5, frozenset(), frozenset({NEW}), TIMEOUT))
    assert dig_values(knot, name, "SRV") == {NEW}

    error, _ = failure(
        replace_rrset(knot.address(), ZONE, key, name, "SRV", 5, frozenset(), frozenset({OLD}), TIMEOUT)
    )
    assert error.kind == "conflict" and "YXRRSET" in str(error)
    assert dig_values(knot, name, "SRV") == {NEW}
    # an expectation for a record that is not there fails too
    error, _ = failure(
        replace_rrset(
            knot.address(), ZONE, key, f"none.{ZONE}", "A", 5, frozenset({"127.0.0.1"}), frozenset(), TIMEOUT
        )
    )
    assert error.kind == "conflict"
    # and an empty ``new`` removes the record
    run(replace_rrset(knot.address(), ZONE, key, name, "SRV", 5, frozenset({NEW}), frozenset(), TIMEOUT))
    assert dig_values(knot, name, "SRV") == set()


def test_a_wrong_key_is_refused_and_no_secret_shows(
    knot: KnotServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    right = knot.tsig_key()
    wrong_secret = base64.b64encode(os.urandom(32)).decode()
    cases = {
        "BADSIG": TsigKey(right.name, right.algorithm, Secret(wrong_secret)),
        "BADKEY": TsigKey("someone-else.", right.algorithm, Secret(wrong_secret)),
    }
    texts = [repr(right), str(right)]
    for code, key in cases.items():
        texts += [repr(key), str(key)]
        error, _ = failure(
            replace_rrset(
                knot.address(), ZONE, key, NAME, "SRV", 5, frozenset({OLD}), frozenset({NEW}), TIMEOUT
            )
        )
        assert error.kind == "refused" and str(error).startswith(f"refused: {code}"), str(error)
        texts += [str(error), repr(error), "".join(traceback.format_exception(error))]
    assert dig_values(knot, NAME, "SRV") == {OLD}

    log = knot.process.log_path.read_text()
    assert "verification failed 'BADSIG'" in log and "key 'someone-else.'" in log  # a real log is read
    for secret in (right.secret.reveal(), wrong_secret):
        for text in [*texts, caplog.text, log]:
            assert secret not in text
            assert base64.b64decode(secret).hex() not in text


def test_a_stopped_server_is_unavailable_within_the_timeout_and_keeps_updates(knot: KnotServer) -> None:
    key = knot.tsig_key()
    run(replace_rrset(knot.address(), ZONE, key, NAME, "SRV", 5, frozenset({OLD}), frozenset({NEW}), TIMEOUT))
    knot.stop()
    assert not knot.running()

    error, took = failure(query_rrset(knot.address(), NAME, "SRV", 1.0))
    assert error.kind == "unavailable" and took < 1.0 + SLACK, (error, took)
    error, took = failure(
        replace_rrset(knot.address(), ZONE, key, NAME, "SRV", 5, frozenset({NEW}), frozenset({OLD}), 1.0)
    )
    assert error.kind == "unavailable" and "refused" in str(error) and took < 1.0 + SLACK

    port = knot.port
    knot.start()
    assert knot.port == port and knot.running()
    assert run(query_rrset(knot.address(), NAME, "SRV", TIMEOUT)) == {NEW}  # from the journal / zone file


def test_a_frozen_server_is_unavailable_within_the_timeout_and_may_apply_the_update_later(
    knot: KnotServer,
) -> None:
    key = knot.tsig_key()
    knot.process.pause()
    try:
        # SIGSTOP is asynchronous: a loaded machine may let knotd's threads run on for a moment, so
        # the queries start once every thread of it is stopped
        wait_for(lambda: stopped(knot.process.pid), 10, "knotd's threads to stop")
        for call in (
            query_rrset(knot.address(), NAME, "SRV", 1.0),
            replace_rrset(knot.address(), ZONE, key, NAME, "SRV", 5, frozenset({OLD}), frozenset({NEW}), 1.0),
        ):
            error, took = failure(call)
            assert error.kind == "unavailable" and "within 1s" in str(error), error
            assert 1.0 - 0.05 <= took < 1.0 + SLACK
    finally:
        knot.process.resume()
    # "unavailable" is not "not applied": the update waited in the frozen server's socket and applies
    # now, so a retry must read the record first (or take a conflict with the new value as done)
    wait_for(lambda: dig_values(knot, NAME, "SRV") == {NEW}, 10, "the late update to apply")
    error, _ = failure(
        replace_rrset(knot.address(), ZONE, key, NAME, "SRV", 5, frozenset({OLD}), frozenset({NEW}), TIMEOUT)
    )
    assert error.kind == "conflict"
    assert run(query_rrset(knot.address(), NAME, "SRV", TIMEOUT)) == {NEW}


def test_nxdomain_and_nodata_are_empty_and_cnames_are_not_followed(knot: KnotServer) -> None:
    address = knot.address()
    assert run(query_rrset(address, f"nothing-here.{ZONE}", "SRV", TIMEOUT)) == frozenset()  # NXDOMAIN
    assert run(query_rrset(address, f"node.{ZONE}", "SRV", TIMEOUT)) == frozenset()  # NODATA
    assert run(query_rrset(address, f"node.{ZONE}", "A", TIMEOUT)) == {"127.0.0.1"}
    assert run(query_rrset(address, f"NODE.{ZONE}", "A", TIMEOUT)) == {"127.0.0.1"}
    assert run(query_rrset(address, f"alias.{ZONE}", "CNAME", TIMEOUT)) == {f"node.{ZONE}"}
    # Knot answers alias/A with the CNAME and node's A: neither is alias's A
    assert any(" CNAME " in line for line in dig(knot, f"alias.{ZONE}", "A"))
    assert run(query_rrset(address, f"alias.{ZONE}", "A", TIMEOUT)) == frozenset()
    # a zone the server does not serve
    error, _ = failure(query_rrset(address, "example.com.", "A", TIMEOUT))
    assert error.kind == "refused"


def test_a_truncated_answer_is_asked_again_over_tcp(stack: Stack) -> None:
    values = {f"0 0 {port} node.tierwatch.test." for port in range(7000, 7040)}  # ~1.4 KB: over 512
    knot = start_knot(stack, records=[f"many 5 IN SRV {value}" for value in sorted(values)])
    assert run(query_rrset(knot.address(), f"many.{ZONE}", "SRV", TIMEOUT)) == values


def test_a_zone_knot_cannot_load_fails_the_start_at_once(stack: Stack) -> None:
    start = time.monotonic()
    with pytest.raises(StackError, match="could not load zone") as caught:
        start_knot(stack, records=["broken IN SRV not-a-srv-record"], ready_timeout=10)
    assert time.monotonic() - start < 5
    assert "line 6" in str(caught.value)  # the zone loader's words, from knotd's log


def test_an_update_outside_the_served_zone_is_refused(knot: KnotServer) -> None:
    error, _ = failure(
        replace_rrset(
            knot.address(),
            "other.test.",
            knot.tsig_key(),
            "x.other.test.",
            "A",
            5,
            frozenset(),
            frozenset({"127.0.0.1"}),
            TIMEOUT,
        )
    )
    assert error.kind == "refused" and "NOTAUTH" in str(error)


def test_canonical_forms_match_what_the_server_returns(knot: KnotServer) -> None:
    assert canonical("SRV", "0 0 6380 node", origin=ZONE) == NEW
    assert canonical("SRV", "0 0 6380 node.tierwatch.test") == NEW  # relative to the root: absolute
    assert canonical("SRV", "0  0 6380   NODE.Tierwatch.test.") == NEW
    assert canonical("CNAME", "Node", origin="tierwatch.test") == f"node.{ZONE}"
    assert canonical("AAAA", "0:0:0:0:0:0:0:1") == "::1"
    assert canonical("TXT", '"Keep Case"') == '"Keep Case"'
    # Knot stores names in lower case and compares prerequisites so: the canonical form matches both
    shouted = "0 0 6380 NODE.TIERWATCH.TEST."
    key = knot.tsig_key()
    run(
        replace_rrset(
            knot.address(), ZONE, key, NAME, "SRV", 5, frozenset({OLD}), frozenset({shouted}), TIMEOUT
        )
    )
    assert dig_values(knot, NAME, "SRV") == {NEW}
    assert run(query_rrset(knot.address(), NAME, "SRV", TIMEOUT)) == {canonical("SRV", shouted)}
    run(
        replace_rrset(
            knot.address(), ZONE, key, NAME, "SRV", 5, frozenset({shouted}), frozenset({OLD}), TIMEOUT
        )
    )
    with pytest.raises(ValueError):
        canonical("SRV", "not a srv record")
    with pytest.raises(ValueError):
        canonical("A", "node.tierwatch.test.")


# --- hostile servers: an answer that is garbled, unsigned or signed with another secret ---------------

Responder = Callable[[bytes], bytes | None]


@contextlib.asynccontextmanager
async def fake_server(respond: Responder) -> AsyncIterator[int]:
    """A UDP and TCP "DNS server" on one port answering each request with ``respond(wire)``."""

    class Udp(asyncio.DatagramProtocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            answer = respond(data)
            if answer is not None:
                self.transport.sendto(answer, addr)  # type: ignore[attr-defined]

    async def tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            (length,) = struct.unpack("!H", await reader.readexactly(2))
            answer = respond(await reader.readexactly(length))
            if answer is None:
                await asyncio.sleep(3600)
            writer.write(struct.pack("!H", len(answer) & 0xFFFF) + answer)
            await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(tcp, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(Udp, local_addr=("127.0.0.1", port))
    try:
        yield port
    finally:
        transport.close()
        server.close()


KEY = TsigKey("tierwatch-recovery.", "hmac-sha256", Secret(base64.b64encode(b"k" * 32).decode()))


def unsigned_noerror(wire: bytes) -> bytes:
    return dns.message.make_response(dns.message.from_wire(wire, keyring=False)).to_wire()


def signed_with_another_secret(wire: bytes) -> bytes:
    request = dns.message.from_wire(wire, keyring=False)
    response = dns.message.make_response(request)
    response.use_tsig(dns.tsig.Key("tierwatch-recovery.", b"x" * 32, "hmac-sha256"))
    return response.to_wire()


def another_id(wire: bytes) -> bytes:
    response = dns.message.make_response(dns.message.from_wire(wire, keyring=False))
    response.id ^= 1
    return response.to_wire()


@pytest.mark.parametrize(
    ("respond", "call", "kind", "words"),
    [
        (lambda wire: b"\x00garbage", "query", "protocol", "garbled"),
        (lambda wire: wire[:2] + b"\x80\x00" + b"\xff" * 40, "update", "protocol", "garbled"),
        (another_id, "query", "protocol", "garbled"),
        (another_id, "update", "protocol", "does not match"),
        (unsigned_noerror, "update", "protocol", "not signed"),
        (signed_with_another_secret, "update", "protocol", "does not verify"),
        (lambda wire: None, "query", "unavailable", "within 1s"),
        (lambda wire: None, "update", "unavailable", "within 1s"),
    ],
    ids=[
        "udp-garbage",
        "tcp-garbage",
        "udp-other-id",
        "tcp-other-id",
        "unsigned",
        "bad-mac",
        "silent-udp",
        "silent-tcp",
    ],
)
def test_a_hostile_server_fails_with_the_right_kind(
    respond: Responder, call: str, kind: str, words: str
) -> None:
    async def main() -> tuple[DnsError, float]:
        async with fake_server(respond) as port:
            start = time.monotonic()
            with pytest.raises(DnsError) as caught:
                if call == "query":
                    await query_rrset(("127.0.0.1", port), NAME, "SRV", 1.0)
                else:
                    await replace_rrset(
                        ("127.0.0.1", port),
                        ZONE,
                        KEY,
                        NAME,
                        "SRV",
                        5,
                        frozenset({OLD}),
                        frozenset({NEW}),
                        1.0,
                    )
            return caught.value, time.monotonic() - start

    error, took = asyncio.run(main())
    assert error.kind == kind and words in str(error), str(error)
    assert took < 1.0 + SLACK
    assert KEY.secret.reveal() not in str(error)
