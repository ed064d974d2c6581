"""Target discovery end to end: the ``Discovery`` runner against real file_sd files (JSON and YAML,
rewritten while it runs) and a real DNS server (dnsmasq on a free port): targets appear, change and
disappear; bad entries are skipped, logged without secrets and counted; a broken file or a failed
lookup keeps the previous good targets. Also the config checks of ``discovery:`` entries."""

from __future__ import annotations

import asyncio
import io
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry, generate_latest

from tierwatch.config import ConfigError, LoadedConfig, TargetConfig, load_config
from tierwatch.discovery import Discovery, DiscoveryCollector
from tierwatch.events import EventLog
from tierwatch_lab.stack import Stack
from tierwatch_lab.stack.ports import free_port

ROOT = Path(__file__).resolve().parents[2]
REFRESH = "200ms"


def write_atomically(path: Path, data: Any, *, as_json: bool | None = None) -> None:
    """Replace a file_sd file in one step (as the docs ask writers to do)."""
    as_json = path.suffix == ".json" if as_json is None else as_json
    scratch = path.with_name(path.name + ".tmp")
    scratch.write_text(json.dumps(data) if as_json else yaml.safe_dump(data))
    os.replace(scratch, path)


def config(tmp_path: Path, *clusters: dict[str, Any]) -> LoadedConfig:
    path = tmp_path / "tierwatch.yml"
    data = {"monitor": {"interval": "1s", "timeout": "500ms"}, "clusters": list(clusters)}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


class Recorder:
    """The runner's callback: keeps every change it was handed, and the latest list per cluster."""

    def __init__(self) -> None:
        self.calls: list[dict[str, list[TargetConfig]]] = []
        self.latest: dict[str, list[TargetConfig]] = {}

    def __call__(self, changed: dict[str, list[TargetConfig]]) -> None:
        self.calls.append(changed)
        self.latest.update(changed)

    def urls(self, cluster: str) -> dict[str, tuple[str, str]]:
        return {t.name: (t.region, t.url) for t in self.latest.get(cluster, [])}


def events(stream: io.StringIO, name: str) -> list[dict[str, Any]]:
    return [e for e in map(json.loads, stream.getvalue().splitlines()) if e["event"] == name]


def metrics_text(discovery: Discovery) -> str:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(DiscoveryCollector(discovery))  # type: ignore[arg-type]
    return generate_latest(registry).decode()


def sample(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(name + "{"):
            head, value = line.rsplit(" ", 1)
            got = ",".join(sorted(head[len(name) + 1 : -1].split(",")))
            if got == want:
                return float(value)
    return None


async def until(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def running(discovery: Discovery, body: Callable[[], Awaitable[None]]) -> None:
    """Run ``body`` while the discovery runner runs, then stop the runner (it must end promptly)."""

    async def main() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(discovery.run(stop))
        try:
            await body()
        finally:
            stop.set()
            await asyncio.wait_for(task, 5)

    asyncio.run(main())


# --- config -------------------------------------------------------------------------------------------


def test_example_discovery_config_loads() -> None:
    loaded = load_config(ROOT / "examples" / "discovery.yml")
    web = loaded.config.clusters[0]
    assert [d.kind for d in web.discovery] == ["file_sd", "dns_sd"]
    assert web.discovery[0].file_sd is not None and web.discovery[0].file_sd.refresh_interval == 30.0
    cache = loaded.config.clusters[1]
    assert cache.targets == [] and cache.discovery[0].dns_sd is not None
    out = subprocess.run(
        [sys.executable, "-m", "tierwatch", "check-config", str(ROOT / "examples" / "discovery.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "3 discovery sources" in out.stdout


def test_config_lists_every_problem_of_discovery_entries(tmp_path: Path) -> None:
    clusters = [
        {"name": "none", "tier": "app", "targets": []},
        {
            "name": "web",
            "tier": "app",
            "discovery": [
                {"file_sd": {"files": ["/x/*.json"]}, "dns_sd": {"names": ["a.example."], "region": "r"}},
                {"file_sd": {"files": ["/x/*/y.json", "/x/t.txt"], "scheme": "redis", "path": "health"}},
                {"file_sd": {"files": ["/x/a.json"], "options": {"name": "x", "expect_status": [999]}}},
                {"dns_sd": {"names": ["_http._tcp.web.", "bad name"], "port": 80, "nameservers": ["nope:1"]}},
                {"dns_sd": {"names": ["web.example."], "type": "A", "region": "primary"}},
            ],
        },
        {
            "name": "cache",
            "tier": "redis",
            "discovery": [{"file_sd": {"files": ["/x/r.yml"], "options": {"expect_body": "ok"}}}],
        },
    ]
    path = tmp_path / "bad.yml"
    path.write_text(yaml.safe_dump({"clusters": clusters}, sort_keys=False))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = "\n".join(caught.value.problems)
    expected = [
        "clusters[0](none).targets: list should have at least 1 item (or the cluster a discovery list)",
        "clusters[1](web).discovery[0]: expected exactly one of file_sd or dns_sd",
        "clusters[1](web).discovery[1].file_sd.files[0]: expected a .json, .yml or .yaml path",
        "clusters[1](web).discovery[1].file_sd.files[1]: expected a .json",
        "clusters[1](web).discovery[1].file_sd.scheme: expected one of http, https for a cluster of tier app",
        "clusters[1](web).discovery[1].file_sd.path: expected a path starting with '/'",
        "clusters[1](web).discovery[2].file_sd.options.name: is set per discovered target",
        "clusters[1](web).discovery[2].file_sd.options.expect_status[0]: input should be less than or equal",
        "clusters[1](web).discovery[3].dns_sd.region: required for dns_sd",
        "clusters[1](web).discovery[3].dns_sd.names[1]: expected a DNS name",
        "clusters[1](web).discovery[3].dns_sd.port: SRV records give the port",
        "clusters[1](web).discovery[3].dns_sd.nameservers[0]: expected an IP address",
        "clusters[1](web).discovery[4].dns_sd.port: required with type A",
        "clusters[2](cache).discovery[0].file_sd.options.expect_body: is only valid on HTTP targets",
    ]
    for line in expected:
        assert line in text, f"missing {line!r} in:\n{text}"


# --- file_sd ------------------------------------------------------------------------------------------


def test_file_sd_targets_appear_change_and_disappear(tmp_path: Path) -> None:
    sd = tmp_path / "sd"
    sd.mkdir()
    web = {
        "name": "web",
        "tier": "app",
        "targets": [{"name": "es-1", "region": "primary", "url": "http://127.0.0.1:3001/health"}],
        "discovery": [
            {
                "file_sd": {
                    "files": [f"{sd}/*.json", f"{sd}/*.yml"],
                    "refresh_interval": REFRESH,
                    "path": "/health",
                }
            }
        ],
    }
    loaded = config(tmp_path, web)
    write_atomically(
        sd / "a.json",
        [
            {"targets": ["127.0.0.1:3002"], "labels": {"target": "es-2", "region": "primary", "env": "prod"}},
            {"targets": ["10.0.0.7:3003"], "labels": {"region": "failover", "__meta_x": "ignored"}},
        ],
    )
    stream = io.StringIO()
    recorder = Recorder()
    discovery = Discovery(loaded, recorder, EventLog("json", stream=stream))

    async def body() -> None:
        await until(lambda: bool(recorder.calls), "the first discovery")
        # static targets first, then the file's; a name derived from the address when none is given
        assert recorder.urls("web") == {
            "es-1": ("primary", "http://127.0.0.1:3001/health"),
            "es-2": ("primary", "http://127.0.0.1:3002/health"),
            "web-10.0.0.7-3003": ("failover", "http://10.0.0.7:3003/health"),
        }
        assert recorder.latest["web"][0].name == "es-1"
        text = metrics_text(discovery)
        assert sample(text, "tierwatch_discovery_targets", tier="app", cluster="web", source="file_sd") == 2
        # a YAML file appears next to it, with a group scheme and path of its own
        write_atomically(
            sd / "b.yml",
            [
                {
                    "targets": ["web-4.example:8443"],
                    "labels": {
                        "target": "es-4",
                        "region": "failover",
                        "__scheme__": "https",
                        "__path__": "/ready",
                    },
                }
            ],
        )
        await until(lambda: "es-4" in recorder.urls("web"), "the YAML file's target")
        assert recorder.urls("web")["es-4"] == ("failover", "https://web-4.example:8443/ready")
        # a target changes address; another leaves the file
        write_atomically(
            sd / "a.json",
            [{"targets": ["127.0.0.1:3022"], "labels": {"target": "es-2", "region": "primary"}}],
        )
        await until(lambda: "web-10.0.0.7-3003" not in recorder.urls("web"), "the removed target to go")
        assert recorder.urls("web")["es-2"] == ("primary", "http://127.0.0.1:3022/health")
        # a file deleted: its targets go; the static target stays
        (sd / "b.yml").unlink()
        await until(lambda: "es-4" not in recorder.urls("web"), "the deleted file's target to go")
        assert set(recorder.urls("web")) == {"es-1", "es-2"}
        changes = events(stream, "discovery_targets_changed")
        assert changes and changes[-1]["targets"] == 2 and changes[-1]["removed"] == 1
        # nothing changes: no more calls
        calls = len(recorder.calls)
        await asyncio.sleep(0.6)  # three refreshes that must not call back (nothing to poll for)
        assert len(recorder.calls) == calls

    running(discovery, body)


def test_a_broken_file_keeps_its_previous_targets(tmp_path: Path) -> None:
    sd = tmp_path / "sd"
    sd.mkdir()
    web = {
        "name": "web",
        "tier": "app",
        "discovery": [
            {
                "file_sd": {
                    "files": [f"{sd}/*.json", f"{sd}/*.yaml"],
                    "refresh_interval": REFRESH,
                    "region": "primary",
                }
            }
        ],
    }
    loaded = config(tmp_path, web)
    good = sd / "good.json"
    other = sd / "other.yaml"
    write_atomically(good, [{"targets": ["127.0.0.1:4001", "127.0.0.1:4002"]}])
    write_atomically(other, [{"targets": ["127.0.0.1:4003"]}])
    stream = io.StringIO()
    recorder = Recorder()
    discovery = Discovery(loaded, recorder, EventLog("json", stream=stream))

    def errors() -> float:
        return (
            sample(
                metrics_text(discovery),
                "tierwatch_discovery_errors_total",
                tier="app",
                cluster="web",
                source="file_sd",
            )
            or 0.0
        )

    async def body() -> None:
        await until(lambda: len(recorder.urls("web")) == 3, "three targets")
        names = set(recorder.urls("web"))
        assert errors() == 0
        # a half-written JSON file (as a writer that does not rename would leave it)
        good.write_text('[{"targets": ["127.0.0.1:4001", "127.0.0.1:40')
        # and a YAML file that is valid YAML but not file_sd
        write_atomically(other, {"targets": ["127.0.0.1:4003"]})
        await until(lambda: errors() >= 4, "errors counted on two refreshes of two files")
        assert set(recorder.urls("web")) == names, "a broken file must keep its previous targets"
        failed = events(stream, "discovery_refresh_failed")
        assert {e["where"] for e in failed} == {str(good), str(other)}, "each failure logged once"
        reasons = {e["where"]: e["reason"] for e in failed}
        assert reasons[str(good)].startswith("not valid JSON (line 1")
        assert reasons[str(other)] == "expected a list of target groups ({targets: [...], labels: {...}})"
        # a file fixed: its new content applies
        write_atomically(good, [{"targets": ["127.0.0.1:4001"]}])
        await until(lambda: "web-127.0.0.1-4002" not in recorder.urls("web"), "the fixed file to apply")
        assert set(recorder.urls("web")) == {"web-127.0.0.1-4001", "web-127.0.0.1-4003"}

    running(discovery, body)


def test_invalid_entries_are_skipped_logged_without_secrets_and_counted(tmp_path: Path) -> None:
    sd = tmp_path / "sd"
    sd.mkdir()
    clusters = [
        {
            "name": "web",
            "tier": "app",
            "discovery": [{"file_sd": {"files": [f"{sd}/web.json"], "refresh_interval": REFRESH}}],
        },
        {
            "name": "cache",
            "tier": "redis",
            "targets": [{"name": "redis-a", "region": "primary", "url": "redis://127.0.0.1:6379"}],
            "discovery": [
                {"file_sd": {"files": [f"{sd}/cache.yml"], "refresh_interval": REFRESH, "region": "primary"}}
            ],
        },
    ]
    loaded = config(tmp_path, *clusters)
    write_atomically(
        sd / "web.json",
        [
            {"targets": ["127.0.0.1:5001"], "labels": {"target": "ok-1", "region": "primary"}},
            {"targets": ["admin:s3cret-pw@127.0.0.1:5002"], "labels": {"region": "primary"}},
            {"targets": ["127.0.0.1:5003"], "labels": {"target": "no-region"}},
            {"targets": ["127.0.0.1:5004"], "labels": {"target": "bad name!", "region": "primary"}},
            {
                "targets": ["127.0.0.1:5005"],
                "labels": {"target": "ftp-1", "region": "primary", "__scheme__": "ftp"},
            },
            {"targets": ["127.0.0.1:99999"], "labels": {"target": "port-1", "region": "primary"}},
            {"targets": ["127.0.0.1:5006"], "labels": {"target": "redis-a", "region": "primary"}},
            {
                "targets": ["127.0.0.1:5007", "127.0.0.1:5008"],
                "labels": {"target": "twin", "region": "primary"},
            },
        ],
    )
    write_atomically(
        sd / "cache.yml",
        [
            {"targets": ["127.0.0.1:6380"], "labels": {"target": "redis-b"}},
            {"targets": ["127.0.0.1:6381"], "labels": {"target": "ok-1"}},
        ],  # taken by web, which came first
    )
    stream = io.StringIO()
    recorder = Recorder()
    discovery = Discovery(loaded, recorder, EventLog("json", stream=stream))
    changed = asyncio.run(discovery.refresh())

    assert recorder.urls("web") == {
        "ok-1": ("primary", "http://127.0.0.1:5001"),
        "twin": ("primary", "http://127.0.0.1:5007"),
    }
    assert recorder.urls("cache") == {
        "redis-a": ("primary", "redis://127.0.0.1:6379"),
        "redis-b": ("primary", "redis://127.0.0.1:6380"),
    }
    assert set(changed) == {"web", "cache"}
    skipped = events(stream, "discovery_target_skipped")
    reasons = {(e["cluster"], e["where"]): e["reason"] for e in skipped}
    web_file = f"{sd}/web.json"
    assert reasons[("web", f"{web_file}: group 1 target 0")].startswith("address: expected host:port")
    assert reasons[("web", f"{web_file}: group 2 target 0")].startswith("no region")
    assert reasons[("web", f"{web_file}: group 3 target 0")].startswith("target label: expected a name")
    assert reasons[("web", f"{web_file}: group 4 target 0")].startswith("url: expected a URL with scheme")
    assert reasons[("web", f"{web_file}: group 5 target 0")].startswith("address: expected host:port")
    assert reasons[("web", f"{web_file}: group 6 target 0")].startswith(
        "target name already taken by cluster cache"
    )
    assert reasons[("web", f"{web_file}: group 7 target 1")].startswith("target name already taken")
    assert reasons[("cache", f"{sd}/cache.yml: group 1 target 0")].startswith(
        "target name already taken by cluster web"
    )
    assert len(skipped) == 8
    assert "s3cret" not in stream.getvalue() and "admin" not in stream.getvalue()
    text = metrics_text(discovery)
    assert (
        sample(text, "tierwatch_discovery_invalid_targets", tier="app", cluster="web", source="file_sd") == 7
    )
    assert sample(text, "tierwatch_discovery_targets", tier="app", cluster="web", source="file_sd") == 2
    assert (
        sample(text, "tierwatch_discovery_invalid_targets", tier="redis", cluster="cache", source="file_sd")
        == 1
    )
    assert "s3cret" not in text
    # the same problems on the next refresh: counted, not logged again
    asyncio.run(discovery.refresh())
    assert len(events(stream, "discovery_target_skipped")) == 8


def test_file_sd_only_config_does_not_load_dnspython(tmp_path: Path) -> None:
    sd = tmp_path / "sd"
    sd.mkdir()
    write_atomically(sd / "a.json", [{"targets": ["127.0.0.1:1"], "labels": {"region": "primary"}}])
    path = tmp_path / "tierwatch.yml"
    path.write_text(
        yaml.safe_dump(
            {
                "clusters": [
                    {"name": "web", "tier": "app", "discovery": [{"file_sd": {"files": [f"{sd}/*.json"]}}]}
                ]
            }
        )
    )
    program = (
        "import asyncio, json, sys\n"
        "from tierwatch.config import load_config\n"
        "from tierwatch.discovery import Discovery\n"
        "found = {}\n"
        "d = Discovery(load_config(sys.argv[1]), found.update)\n"
        "asyncio.run(d.refresh())\n"
        "dns = [m for m in sys.modules if m == 'dns' or m.startswith('dns.')]\n"
        "print(json.dumps([sorted(t.name for t in found['web']), dns]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", program, str(path)], capture_output=True, text=True, timeout=60
    )
    names, dns_modules = json.loads(out.stdout.splitlines()[-1])
    assert names == ["web-127.0.0.1-1"]
    assert dns_modules == []


# --- dns_sd against dnsmasq ---------------------------------------------------------------------------


class Dnsmasq:
    """A real DNS server on 127.0.0.1:port answering for ``test.`` from the records it is given
    (dnsmasq does not re-read its options on SIGHUP: a change restarts it on the same port)."""

    def __init__(self, stack: Stack):
        self.stack = stack
        self.port = free_port()
        self.proc: Any = None
        self.starts = 0

    def start(self, *records: str) -> None:
        self.starts += 1
        conf = self.stack.path("dnsmasq", f"dnsmasq-{self.starts}.conf")
        conf.write_text("".join(f"{r}\n" for r in ("local=/test/", *records)))
        argv = [
            "dnsmasq",
            "--no-daemon",
            f"--port={self.port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--no-resolv",
            "--no-hosts",
            f"--conf-file={conf}",
            "--pid-file=",
            "--user=root",
            "--group=root",
        ]
        self.proc = self.stack.spawn(f"dnsmasq-{self.starts}", argv)
        self._wait_answering()

    def _wait_answering(self) -> None:
        import dns.exception
        import dns.nameserver
        import dns.resolver

        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [dns.nameserver.Do53Nameserver("127.0.0.1", self.port)]
        resolver.lifetime = 0.5
        deadline = time.monotonic() + 10
        while True:
            self.proc.check_alive()
            try:
                resolver.resolve("probe.test.", "A")
                return
            except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
                return  # it answers
            except dns.exception.DNSException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self) -> None:
        self.proc.stop()

    def restart(self, *records: str) -> None:
        self.stop()
        self.start(*records)


@pytest.fixture
def dnsmasq(stack: Stack) -> Iterator[Dnsmasq]:
    yield Dnsmasq(stack)


def test_dns_srv_and_a_records_appear_change_and_disappear(tmp_path: Path, dnsmasq: Dnsmasq) -> None:
    dnsmasq.start(
        "srv-host=_http._tcp.web.test,web-1.test,3001",
        "srv-host=_http._tcp.web.test,web-2.test,3002",
        "host-record=cache.test,127.0.0.11",
        "host-record=cache.test,127.0.0.12",
    )
    server = f"127.0.0.1:{dnsmasq.port}"
    clusters = [
        {
            "name": "web",
            "tier": "app",
            "discovery": [
                {
                    "dns_sd": {
                        "names": ["_http._tcp.web.test."],
                        "type": "SRV",
                        "refresh_interval": REFRESH,
                        "nameservers": [server],
                        "path": "/health",
                        "region": "failover",
                    }
                }
            ],
        },
        {
            "name": "cache",
            "tier": "redis",
            "discovery": [
                {
                    "dns_sd": {
                        "names": ["cache.test"],
                        "type": "A",
                        "port": 6379,
                        "region": "primary",
                        "refresh_interval": REFRESH,
                        "nameservers": [server],
                    }
                }
            ],
        },
    ]
    loaded = config(tmp_path, *clusters)
    stream = io.StringIO()
    recorder = Recorder()
    discovery = Discovery(loaded, recorder, EventLog("json", stream=stream))

    async def body() -> None:
        await until(
            lambda: len(recorder.urls("web")) == 2 and len(recorder.urls("cache")) == 2, "DNS targets"
        )
        assert recorder.urls("web") == {
            "web-web-1.test-3001": ("failover", "http://web-1.test:3001/health"),
            "web-web-2.test-3002": ("failover", "http://web-2.test:3002/health"),
        }
        assert recorder.urls("cache") == {
            "cache-127.0.0.11-6379": ("primary", "redis://127.0.0.11:6379"),
            "cache-127.0.0.12-6379": ("primary", "redis://127.0.0.12:6379"),
        }
        # the DNS server stops answering: lookups fail, counted and logged, the targets stay
        dnsmasq.stop()

        def errors() -> float:
            text = metrics_text(discovery)
            return (
                sample(text, "tierwatch_discovery_errors_total", tier="app", cluster="web", source="dns_sd")
                or 0
            )

        await until(lambda: errors() >= 2, "failed lookups to be counted")
        assert len(recorder.urls("web")) == 2 and len(recorder.urls("cache")) == 2
        failed = events(stream, "discovery_refresh_failed")
        assert {(e["cluster"], e["reason"]) for e in failed} >= {("web", "timeout")}
        # back with one SRV record moved to another port and one gone, and one A record gone
        await asyncio.to_thread(
            dnsmasq.restart,
            "srv-host=_http._tcp.web.test,web-1.test,3011",
            "host-record=cache.test,127.0.0.12",
        )
        await until(lambda: set(recorder.urls("web")) == {"web-web-1.test-3011"}, "the changed SRV records")
        await until(lambda: set(recorder.urls("cache")) == {"cache-127.0.0.12-6379"}, "the changed A records")
        # the names no longer exist (NXDOMAIN): every discovered target is dropped
        await asyncio.to_thread(dnsmasq.restart)
        await until(
            lambda: recorder.urls("web") == {} and recorder.urls("cache") == {}, "NXDOMAIN to drop all"
        )
        text = metrics_text(discovery)
        assert (
            sample(text, "tierwatch_discovery_targets", tier="redis", cluster="cache", source="dns_sd") == 0
        )

    running(discovery, body)


def test_a_refused_change_is_offered_again(tmp_path: Path) -> None:
    sd = tmp_path / "sd"
    sd.mkdir()
    write_atomically(sd / "a.json", [{"targets": ["127.0.0.1:7001"], "labels": {"region": "primary"}}])
    web = {
        "name": "web",
        "tier": "app",
        "discovery": [{"file_sd": {"files": [f"{sd}/a.json"], "refresh_interval": REFRESH}}],
    }
    loaded = config(tmp_path, web)
    stream = io.StringIO()
    accepted: dict[str, list[TargetConfig]] = {}
    refusals = [ValueError("not now")]

    async def apply(changed: dict[str, list[TargetConfig]]) -> None:
        if refusals:
            raise refusals.pop()
        accepted.update(changed)

    discovery = Discovery(loaded, apply, EventLog("json", stream=stream))

    async def body() -> None:
        await until(lambda: "web" in accepted, "the change to be applied after a refusal")
        assert [t.name for t in accepted["web"]] == ["web-127.0.0.1-7001"]
        assert events(stream, "discovery_apply_failed")[0]["reason"] == "ValueError"
        assert discovery.current() == accepted

    running(discovery, body)


# --- wired to the real monitor ------------------------------------------------------------------------


def test_discovered_targets_are_probed_by_the_monitor_and_dropped_cleanly(
    tmp_path: Path, stack: Stack
) -> None:
    from tierwatch.monitor import Monitor
    from tierwatch_lab.stack.http import start_http_backend

    a = start_http_backend(stack, "app-a")
    b = start_http_backend(stack, "app-b")
    sd = tmp_path / "sd"
    sd.mkdir()
    write_atomically(
        sd / "web.json",
        [{"targets": [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], "labels": {"region": "primary"}}],
    )
    web = {
        "name": "web",
        "tier": "app",
        "targets": [],
        "discovery": [
            {"file_sd": {"files": [f"{sd}/*.json"], "refresh_interval": REFRESH, "path": "/health"}}
        ],
    }
    loaded = config(tmp_path, web)
    stream = io.StringIO()
    log = EventLog("json", stream=stream)

    async def main() -> None:
        monitor = Monitor(loaded, log)
        assert monitor.states == []  # nothing static: the targets come from the file

        async def apply(changed: dict[str, list[TargetConfig]]) -> None:
            for cluster, targets in changed.items():
                await monitor.apply_targets(cluster, targets)

        discovery = Discovery(loaded, apply, log)
        stop = asyncio.Event()
        tasks = [asyncio.create_task(monitor.run(stop)), asyncio.create_task(discovery.run(stop))]
        name_a, name_b = f"web-127.0.0.1-{a.port}", f"web-127.0.0.1-{b.port}"
        try:

            def up() -> dict[str, bool]:
                return {s.info.name: s.up for s in monitor.states}

            await until(lambda: up() == {name_a: True, name_b: True}, "both discovered targets probed up")
            write_atomically(
                sd / "web.json", [{"targets": [f"127.0.0.1:{a.port}"], "labels": {"region": "primary"}}]
            )
            await until(lambda: list(up()) == [name_a], "the removed target to leave the monitor")
            rounds = monitor.rounds
            await until(lambda: monitor.rounds >= rounds + 2, "two more rounds")
            assert up() == {name_a: True}
        finally:
            stop.set()
            await asyncio.wait_for(asyncio.gather(*tasks), 10)
            await monitor.close()

    asyncio.run(main())
