"""The pure parts of tierwatch.clients.dns_update and tierwatch.dns_text: canonical rdata text, what
each rcode means, key checks, and arguments refused before anything is sent
(tests/integration/test_dns_update.py runs the rest against a real Knot DNS)."""

from __future__ import annotations

import asyncio
import base64

import dns.rcode
import pytest

from tierwatch.clients.dns_update import (
    DnsError,
    TsigKey,
    query_rrset,
    rcode_error,
    rcode_kind,
    replace_rrset,
)
from tierwatch.config.secrets import Secret
from tierwatch.dns_text import canonical

SECRET = base64.b64encode(b"s3cr3t-bytes-of-the-key-32-long!").decode()
KEY = TsigKey("tierwatch-recovery.", "hmac-sha256", Secret(SECRET))
ZONE = "tierwatch.test."
# nothing listens on port 9 of a test machine, and no test here gets as far as sending
NOWHERE = ("127.0.0.1", 9)


@pytest.mark.parametrize(
    ("rdtype", "text", "origin", "expected"),
    [
        ("SRV", "0 0 6379 node", ZONE, "0 0 6379 node.tierwatch.test."),
        ("SRV", "0 0 6379 node", "tierwatch.test", "0 0 6379 node.tierwatch.test."),
        ("SRV", "0 0 6379 node.tierwatch.test", None, "0 0 6379 node.tierwatch.test."),
        ("SRV", " 0   0  6379   NODE.TierWatch.Test. ", None, "0 0 6379 node.tierwatch.test."),
        ("SRV", "0 0 6379 other.example.", ZONE, "0 0 6379 other.example."),
        ("CNAME", "Node", ZONE, "node.tierwatch.test."),
        ("CNAME", "@", ZONE, "tierwatch.test."),
        ("A", "127.0.0.1", ZONE, "127.0.0.1"),
        ("a", "127.0.0.1", None, "127.0.0.1"),
        ("AAAA", "0:0:0:0:0:0:0:1", None, "::1"),
        ("AAAA", "2001:DB8::1", None, "2001:db8::1"),
        ("TXT", '"Mixed Case stays"', None, '"Mixed Case stays"'),
    ],
)
def test_canonical(rdtype: str, text: str, origin: str | None, expected: str) -> None:
    assert canonical(rdtype, text, origin) == expected
    assert canonical(rdtype, expected) == expected  # a fixed point: answers and configs meet here


@pytest.mark.parametrize(
    ("rdtype", "text", "origin"),
    [
        ("SRV", "not a srv record", None),
        ("SRV", "0 0 70000 node.", None),
        ("SRV", "0 0 6379", None),
        ("A", "node.tierwatch.test.", None),
        ("A", "300.1.1.1", None),
        ("AAAA", "127.0.0.1", None),
        ("CNAME", "a..b", None),
        ("NOTATYPE", "x", None),
        ("ANY", "x", None),
        ("A", "127.0.0.1", "bad..origin"),
    ],
)
def test_canonical_refuses_what_is_not_rdata_of_the_type(rdtype: str, text: str, origin: str | None) -> None:
    with pytest.raises(ValueError):
        canonical(rdtype, text, origin)


@pytest.mark.parametrize(
    ("rcode", "kind"),
    [
        (dns.rcode.NOERROR, None),
        (dns.rcode.NXRRSET, "conflict"),
        (dns.rcode.YXRRSET, "conflict"),
        (dns.rcode.NXDOMAIN, "conflict"),
        (dns.rcode.YXDOMAIN, "conflict"),
        (dns.rcode.REFUSED, "refused"),
        (dns.rcode.NOTAUTH, "refused"),
        (dns.rcode.NOTZONE, "refused"),
        (dns.rcode.SERVFAIL, "unavailable"),
        (dns.rcode.FORMERR, "protocol"),
        (dns.rcode.NOTIMP, "protocol"),
        (dns.rcode.BADVERS, "protocol"),
        (3841, "protocol"),
    ],
)
def test_rcode_kind(rcode: int, kind: str | None) -> None:
    assert rcode_kind(rcode) == kind
    if kind is not None:
        error = rcode_error(rcode)
        assert error.kind == kind and str(error).startswith(f"{kind}: ")


def test_rcode_error_names_the_rcode_and_why() -> None:
    assert str(rcode_error(dns.rcode.NXRRSET)) == "conflict: NXRRSET (the record is not what was expected)"
    assert str(rcode_error(dns.rcode.NOTAUTH)).startswith("refused: NOTAUTH (")
    assert str(rcode_error(dns.rcode.FORMERR)) == "protocol: FORMERR"
    error = DnsError("unavailable", "no answer")
    assert (error.kind, error.detail, str(error)) == ("unavailable", "no answer", "unavailable: no answer")


def test_a_key_never_shows_its_secret() -> None:
    for text in (repr(KEY), str(KEY), f"{KEY}", repr(KEY.secret)):
        assert SECRET not in text
    assert KEY.secret.reveal() == SECRET


@pytest.mark.parametrize(
    ("name", "algorithm", "secret", "words"),
    [
        ("tierwatch-recovery.", "hmac-md5", SECRET, "algorithm"),
        ("tierwatch-recovery.", "HMAC-SHA256", SECRET, "algorithm"),
        ("tierwatch-recovery.", "hmac-sha256", "not base64 at all!", "not base64"),
        ("tierwatch-recovery.", "hmac-sha256", SECRET[:-2], "not base64"),
        ("tierwatch-recovery.", "hmac-sha256", "", "empty"),
        ("bad..name", "hmac-sha256", SECRET, "not a DNS name"),
    ],
)
def test_an_unusable_key_is_refused_without_its_secret(
    name: str, algorithm: str, secret: str, words: str
) -> None:
    with pytest.raises(ValueError) as caught:
        TsigKey(name, algorithm, Secret(secret))
    assert words in str(caught.value)
    if secret:
        assert secret not in str(caught.value)


@pytest.mark.parametrize("algorithm", ["hmac-sha256", "hmac-sha384", "hmac-sha512"])
def test_every_contract_algorithm_is_accepted(algorithm: str) -> None:
    assert TsigKey("k.", algorithm, Secret(SECRET)).algorithm == algorithm


def _replace(**changes: object) -> None:
    args: dict[str, object] = {
        "server": NOWHERE,
        "zone": ZONE,
        "key": KEY,
        "name": f"primary.main-db.{ZONE}",
        "rdtype": "SRV",
        "ttl": 5,
        "expected": frozenset(),
        "new": frozenset({"0 0 6379 node.tierwatch.test."}),
        "timeout": 0.5,
    }
    args.update(changes)
    asyncio.run(replace_rrset(**args))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"name": "elsewhere.example."}, "not in zone"),
        ({"name": "a..b"}, "not a DNS name"),
        ({"zone": "bad..zone"}, "not a DNS name"),
        ({"rdtype": "NOTATYPE"}, "not known"),
        ({"rdtype": "AXFR"}, "meta type"),
        ({"ttl": -1}, "TTL"),
        ({"ttl": 2**31}, "TTL"),
        ({"expected": frozenset({"not srv"})}, "SRV record data"),
        ({"new": frozenset({"0 0 99999 node."})}, "SRV record data"),
        ({"server": ("localhost", 53)}, "IP address"),
    ],
)
def test_an_update_with_bad_arguments_is_refused_before_sending(
    changes: dict[str, object], words: str
) -> None:
    with pytest.raises(ValueError) as caught:
        _replace(**changes)
    assert words in str(caught.value)


@pytest.mark.parametrize(
    ("server", "name", "rdtype", "words"),
    [
        (NOWHERE, "a..b", "A", "not a DNS name"),
        (NOWHERE, "node.tierwatch.test.", "ANY", "meta type"),
        (("node.tierwatch.test", 53), "node.tierwatch.test.", "A", "IP address"),
    ],
)
def test_a_query_with_bad_arguments_is_refused_before_sending(
    server: tuple[str, int], name: str, rdtype: str, words: str
) -> None:
    with pytest.raises(ValueError) as caught:
        asyncio.run(query_rrset(server, name, rdtype, 0.5))
    assert words in str(caught.value)
