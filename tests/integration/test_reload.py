"""Reload without restart (SIGHUP and POST /-/reload) of the real ``tierwatch serve`` and
``tierwatch recover`` processes: targets added, removed and changed while the unchanged ones keep their
connections and counters; an invalid file refused while the old config keeps running; scrapes and
probe rounds going on through a series of reloads; the recovery service's token rotation, allow-list
and refusals."""

from __future__ import annotations

import asyncio
import io
import itertools
import json
import os
import shutil
import signal
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from test_web_config import HASH, PASSWORD, USER, make_pki, ready_over_tls, tls_client, write_web_config

from tierwatch.config import LoadedConfig, TargetConfig
from tierwatch.events import EventLog
from tierwatch.metrics import ReadyExposition
from tierwatch.monitor import Monitor
from tierwatch_lab.stack import Stack, free_port, wait_for
from tierwatch_lab.stack.http import HttpBackend, start_http_backend
from tierwatch_lab.stack.redis import start_redis
from tierwatch_lab.stack.tierwatch import TierwatchProcess, start_exporter

from helpers import connections_to, metric_value
from recovery_fixtures import RESTART_LABELS, TOKEN, alert, app_cluster, payload, start_recovery

INTERVAL = 1.0


def write_atomically(path: Path, data: dict[str, Any]) -> None:
    """Replace the config in one step, so a reload never reads half a file."""
    scratch = path.with_suffix(".tmp")
    scratch.write_text(yaml.safe_dump(data, sort_keys=False))
    os.replace(scratch, path)


def exporter_config(*clusters: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "monitor": {"interval": f"{INTERVAL:g}s", "timeout": "500ms"},
        "log": {"format": "json"},
        "clusters": list(clusters),
        **extra,
    }


def web(*backends: tuple[str, HttpBackend], region: str = "primary") -> dict[str, Any]:
    return {
        "name": "web",
        "tier": "app",
        "targets": [{"name": name, "region": region, "url": b.url} for name, b in backends],
    }


def backend_stats(backend: HttpBackend) -> dict[str, int]:
    """The backend's own counters (this request is one more connection and is not a request)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{backend.port}/_stats", timeout=5) as response:
        text = response.read().decode()
    return {key: int(value) for key, value in (pair.split("=") for pair in text.split())}


def scrape(exporter: TierwatchProcess) -> str:
    response = httpx.get(exporter.url + "/metrics", timeout=5)
    assert response.status_code == 200
    return response.text


def value(exporter: TierwatchProcess, name: str, **labels: str) -> float | None:
    return metric_value(scrape(exporter), name, **labels)


def probes_of(exporter: TierwatchProcess, target: str) -> float:
    return value(exporter, "tierwatch_probes_total", target=target) or 0.0


def events(process: TierwatchProcess, name: str) -> list[dict[str, Any]]:
    found = []
    for line in process.process.log_path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            record = json.loads(line)
            if record.get("event") == name:
                found.append(record)
    return found


def sighup(process: TierwatchProcess) -> None:
    assert process.process.popen is not None
    process.process.popen.send_signal(signal.SIGHUP)


def test_sighup_adds_removes_and_changes_targets_and_keeps_the_unchanged_ones(
    stack: Stack, tmp_path: Path
) -> None:
    kept, removed, added = (start_http_backend(stack, n) for n in ("kept", "removed", "added"))
    old_home, new_home = start_http_backend(stack, "old-home"), start_http_backend(stack, "new-home")
    cache = start_redis(stack, "redis-a")
    redis_cluster = {
        "name": "cache-main",
        "tier": "redis",
        "targets": [{"name": "redis-a", "region": "primary", "url": cache.url}],
    }
    config = tmp_path / "tierwatch.yml"
    write_atomically(
        config,
        exporter_config(
            web(("es-kept", kept), ("es-removed", removed), ("es-moved", old_home)), redis_cluster
        ),
    )
    exporter = start_exporter(stack, config)
    wait_for(lambda: probes_of(exporter, "es-kept") >= 2, 10, "two probes of es-kept")
    started_reload_time = value(exporter, "tierwatch_config_last_reload_success_timestamp_seconds")
    assert value(exporter, "tierwatch_config_last_reload_successful") == 1
    kept_before = backend_stats(kept)
    redis_before = cache.info("stats")["total_connections_received"]
    count_before = probes_of(exporter, "es-kept")
    assert value(exporter, "tierwatch_up", target="es-removed") == 1

    write_atomically(
        config,
        exporter_config(web(("es-kept", kept), ("es-added", added), ("es-moved", new_home)), redis_cluster),
    )
    sighup(exporter)
    wait_for(lambda: value(exporter, "tierwatch_up", target="es-added") == 1, 10, "es-added probed")
    text = scrape(exporter)
    assert 'target="es-removed"' not in text  # every series of the removed target is gone
    assert value(exporter, "tierwatch_config_last_reload_successful") == 1
    assert value(exporter, "tierwatch_config_last_reload_success_timestamp_seconds") > started_reload_time
    # the changed target is probed at its new address, and its old connection is closed
    wait_for(lambda: backend_stats(new_home)["requests"] >= 2, 10, "es-moved probed at its new URL")
    old_requests = backend_stats(old_home)["requests"]
    wait_for(lambda: probes_of(exporter, "es-kept") >= count_before + 3, 10, "three more probes of es-kept")
    assert backend_stats(old_home)["requests"] == old_requests
    # the unchanged targets kept their connections (the only new ones are these stats requests) ...
    kept_after = backend_stats(kept)
    assert kept_after["connections"] == kept_before["connections"] + 1
    assert kept_after["requests"] > kept_before["requests"]
    assert cache.info("stats")["total_connections_received"] == redis_before + 1
    # ... and their counters went on instead of starting again
    assert probes_of(exporter, "es-kept") >= count_before + 3
    assert probes_of(exporter, "redis-a") > 2
    [reloaded] = events(exporter, "config_reloaded")
    assert (reloaded["added"], reloaded["removed"], reloaded["changed"], reloaded["source"]) == (
        1,
        1,
        1,
        "sighup",
    )
    assert reloaded["kept"] == 2
    exporter.process.check_alive()


def test_an_open_circuit_stays_open_across_a_reload_and_a_moved_target_starts_closed(
    stack: Stack, tmp_path: Path
) -> None:
    """Default breaker (5 failures, 30 s): a reload must not give an unchanged target's open circuit a
    fresh start (it would probe again at once); a target whose URL changed starts closed."""
    live, fixed = start_http_backend(stack, "live"), start_http_backend(stack, "fixed")
    dead = f"http://127.0.0.1:{free_port()}/health"  # nothing listens: refused
    config = tmp_path / "tierwatch.yml"
    dead_kept = {"name": "es-dead", "region": "primary", "url": dead}
    moved_dead = {"name": "es-moved", "region": "primary", "url": dead}
    cluster = {"name": "web", "tier": "app", "targets": [dead_kept, moved_dead]}
    write_atomically(config, exporter_config(web(("es-live", live)), {**cluster, "name": "broken"}))
    exporter = start_exporter(stack, config)

    def circuit(target: str) -> str | None:
        text = scrape(exporter)
        for state in ("closed", "open", "half_open"):
            if metric_value(text, "tierwatch_circuit_state", target=target, state=state) == 1:
                return state
        return None

    def failures(target: str) -> float:
        return value(exporter, "tierwatch_probe_failures_total", target=target, reason="refused") or 0.0

    wait_for(lambda: circuit("es-dead") == "open" and circuit("es-moved") == "open", 20, "both circuits open")
    assert failures("es-dead") == 5  # the default failure_threshold, then no more probes

    moved = {**moved_dead, "url": fixed.url}
    write_atomically(
        config,
        exporter_config(
            web(("es-live", live), ("es-new", live)),
            {**cluster, "name": "broken", "targets": [dead_kept, moved]},
        ),
    )
    sighup(exporter)
    wait_for(lambda: events(exporter, "config_reloaded"), 10, "the reload")
    [reloaded] = events(exporter, "config_reloaded")
    assert (reloaded["added"], reloaded["changed"], reloaded["removed"]) == (1, 1, 0)
    wait_for(lambda: value(exporter, "tierwatch_up", target="es-moved") == 1, 10, "es-moved probed at once")
    assert circuit("es-moved") == "closed"
    rounds = value(exporter, "tierwatch_probe_rounds_total") or 0
    wait_for(lambda: (value(exporter, "tierwatch_probe_rounds_total") or 0) >= rounds + 3, 10, "3 rounds")
    # es-dead: still open, not probed once since (its 30 s reset_timeout has not passed)
    assert circuit("es-dead") == "open"
    assert failures("es-dead") == 5
    assert not events(exporter, "circuit_half_open")
    exporter.process.check_alive()


def test_invalid_config_is_refused_and_the_old_one_keeps_running(stack: Stack, tmp_path: Path) -> None:
    first, second = start_http_backend(stack, "first"), start_http_backend(stack, "second")
    config = tmp_path / "tierwatch.yml"
    write_atomically(config, exporter_config(web(("es-1", first))))
    exporter = start_exporter(stack, config)
    loaded_at = value(exporter, "tierwatch_config_last_reload_success_timestamp_seconds")
    assert httpx.get(exporter.url + "/-/reload").status_code == 405

    secret = "hunter2-Never-Shown"
    bad = exporter_config(web(("es-1", first)))
    bad["monitor"]["timeout"] = "5s"  # not below the interval
    bad["clusters"].append(
        {
            "name": "cache",
            "tier": "redis",
            "targets": [{"name": "r", "region": "primary", "url": f"redis://:{secret}@127.0.0.1:1"}],
        }
    )
    write_atomically(config, bad)
    refused = httpx.post(exporter.url + "/-/reload", timeout=10)
    assert refused.status_code == 500
    assert f"{config}:3: monitor.timeout: expected a probe timeout below monitor.interval" in refused.text
    assert "url: URL must not contain a password" in refused.text
    assert secret not in refused.text
    count = probes_of(exporter, "es-1")
    wait_for(lambda: probes_of(exporter, "es-1") >= count + 2, 10, "es-1 still probed")
    assert value(exporter, "tierwatch_config_last_reload_successful") == 0
    assert value(exporter, "tierwatch_config_last_reload_success_timestamp_seconds") == loaded_at
    assert 'target="r"' not in scrape(exporter)
    # SIGHUP with the same bad file: refused too, the problems in the event log, never the secret
    sighup(exporter)
    wait_for(lambda: len(events(exporter, "config_reload_failed")) == 2, 10, "second refusal logged")
    problems = [e["problem"] for e in events(exporter, "config_problem")]
    assert any(p.startswith(f"{config}:3: monitor.timeout:") for p in problems)
    assert secret not in exporter.process.log_path.read_text()

    write_atomically(config, exporter_config(web(("es-1", first), ("es-2", second))))
    accepted = httpx.post(exporter.url + "/-/reload", timeout=10)
    assert accepted.status_code == 200, accepted.text
    assert value(exporter, "tierwatch_config_last_reload_successful") == 1
    assert value(exporter, "tierwatch_config_last_reload_success_timestamp_seconds") > loaded_at
    wait_for(lambda: value(exporter, "tierwatch_up", target="es-2") == 1, 10, "es-2 probed")


def test_scrapes_answer_and_no_probe_round_is_lost_during_reloads(stack: Stack, tmp_path: Path) -> None:
    steady = [start_http_backend(stack, f"steady-{i}") for i in range(3)]
    extra = start_http_backend(stack, "extra")
    config = tmp_path / "tierwatch.yml"
    base = [(f"es-{i}", b) for i, b in enumerate(steady)]
    write_atomically(config, exporter_config(web(*base)))
    exporter = start_exporter(stack, config)
    wait_for(lambda: probes_of(exporter, "es-0") >= 2, 10, "two probes of es-0")

    statuses: list[int] = []
    stamps: list[float] = []  # es-0's last probe time, as each scrape saw it
    done = threading.Event()

    def scraper() -> None:
        with httpx.Client(timeout=5) as client:
            while not done.is_set():
                response = client.get(exporter.url + "/metrics")
                statuses.append(response.status_code)
                stamp = metric_value(response.text, "tierwatch_last_probe_timestamp_seconds", target="es-0")
                if stamp is not None and (not stamps or stamp != stamps[-1]):
                    stamps.append(stamp)

    thread = threading.Thread(target=scraper)
    rounds_before = value(exporter, "tierwatch_probe_rounds_total") or 0
    probes_before = {name: probes_of(exporter, name) for name, _ in base}
    started = time.monotonic()
    thread.start()
    try:
        for i in range(10):
            targets = [*base, ("es-extra", extra)] if i % 2 == 0 else base
            write_atomically(config, exporter_config(web(*targets)))
            if i % 2:
                response = httpx.post(exporter.url + "/-/reload", timeout=10)
                assert response.status_code == 200, response.text
            else:
                sighup(exporter)
                wait_for(lambda n=i: len(events(exporter, "config_reloaded")) == n + 1, 10, f"reload {i}")
            time.sleep(0.3)  # reloads spread over several intervals, on purpose
        wait_for(lambda: len(stamps) >= 2 and time.monotonic() - started > 4 * INTERVAL, 10, "scrapes")
    finally:
        done.set()
        thread.join(10)
    elapsed = time.monotonic() - started
    assert len(events(exporter, "config_reloaded")) == 10
    assert statuses and set(statuses) == {200}
    gaps = [b - a for a, b in itertools.pairwise(stamps)]
    assert max(gaps) < 1.5 * INTERVAL, gaps  # a lost round would leave a gap of two intervals
    whole_intervals = int(elapsed // INTERVAL)
    for name, _ in base:  # every kept target, not only the one whose timestamps were followed
        assert probes_of(exporter, name) - probes_before[name] >= whole_intervals - 1, name
    assert (value(exporter, "tierwatch_probe_rounds_total") or 0) - rounds_before >= whole_intervals - 1
    assert 'target="es-extra"' not in scrape(exporter)  # the last config has no es-extra
    exporter.process.check_alive()


def test_reload_is_behind_basic_auth_and_renews_the_tls_certificate(stack: Stack, tmp_path: Path) -> None:
    old, new = make_pki(tmp_path / "old"), make_pki(tmp_path / "new")
    cert, key = tmp_path / "live.crt", tmp_path / "live.key"
    shutil.copy(old.server_cert, cert)
    shutil.copy(old.server_key, key)
    web_file = write_web_config(
        tmp_path / "web.yml",
        {
            "tls_server_config": {"cert_file": str(cert), "key_file": str(key)},
            "basic_auth_users": {USER: HASH},
        },
    )
    config = tmp_path / "tierwatch.yml"
    write_atomically(config, exporter_config(web(("es-1", start_http_backend(stack, "es-1")))))
    trusts_old, trusts_new = tls_client(old), tls_client(new)
    exporter = start_exporter(
        stack,
        config,
        extra_args=["--web.config.file", str(web_file)],
        ready_check=ready_over_tls(trusts_old, (USER, PASSWORD)),
    )
    reload_url = f"https://127.0.0.1:{exporter.port}/-/reload"
    assert httpx.post(reload_url, verify=trusts_old, timeout=10).status_code == 401
    assert httpx.post(reload_url, verify=trusts_old, auth=(USER, "wrong"), timeout=10).status_code == 401

    key.write_text("not a key\n")  # a half-renewed pair: refused, the old certificate keeps serving
    refused = httpx.post(reload_url, verify=trusts_old, auth=(USER, PASSWORD), timeout=10)
    assert refused.status_code == 500 and "cannot use the certificate and key again" in refused.text
    shutil.copy(old.server_key, key)
    assert httpx.post(reload_url, verify=trusts_old, auth=(USER, PASSWORD), timeout=10).status_code == 200

    shutil.copy(new.server_cert, cert)
    shutil.copy(new.server_key, key)
    sighup(exporter)
    wait_for(lambda: len(events(exporter, "config_reloaded")) == 2, 10, "the reload after the renewal")
    metrics = httpx.get(
        exporter.url.replace("http:", "https:") + "/metrics",
        verify=trusts_new,
        auth=(USER, PASSWORD),
        timeout=10,
    )
    assert metrics.status_code == 200
    assert metric_value(metrics.text, "tierwatch_config_last_reload_successful") == 1
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(exporter.url.replace("http:", "https:") + "/health", verify=trusts_old, timeout=10)


def test_apply_targets_replaces_one_cluster_and_a_new_interval_spreads_again(
    stack: Stack, make_config: Callable[..., LoadedConfig]
) -> None:
    """The entry point for target discovery, in process: one cluster's list replaced, the rest kept."""
    a, b, c = (start_http_backend(stack, n) for n in ("a", "b", "c"))
    loaded = make_config([web(("es-a", a), ("es-b", b)), {**web(("es-c", c)), "name": "other"}])

    async def scenario() -> None:
        monitor = Monitor(loaded, EventLog(stream=io.StringIO()))
        exposition = ReadyExposition(monitor)
        stop = asyncio.Event()
        task = asyncio.create_task(monitor.run(stop))
        try:
            await asyncio.wait_for(monitor.first_round_done.wait(), 10)
            kept = monitor.clusters["web"].config.targets[0]
            probes = {name: monitor._by_name[name].probe for name in ("es-a", "es-c")}
            assert connections_to({a.port}) == 1
            moved = TargetConfig(name="es-b2", region="primary", url=b.url)
            result = await monitor.apply_targets("web", [kept, moved])
            assert (result.kept, result.added, result.removed, result.changed) == (
                ["es-a", "es-c"],
                ["es-b2"],
                ["es-b"],
                [],
            )
            assert all(monitor._by_name[name].probe is probe for name, probe in probes.items())
            with pytest.raises(ValueError, match="es-c"):
                await monitor.apply_targets("web", [kept, TargetConfig(name="es-c", region="p", url=c.url)])
            deadline = time.monotonic() + 5
            while (monitor._by_name["es-b2"].state.up is not True) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            body = exposition.body(generate_latest, CONTENT_TYPE_LATEST).decode()
            assert 'target="es-b"' not in body and metric_value(body, "tierwatch_up", target="es-b2") == 1
            assert connections_to({a.port}) == 1  # es-a's connection was kept, not doubled

            faster = make_config(
                [web(("es-a", a), ("es-b", b)), {**web(("es-c", c)), "name": "other"}],
                interval="500ms",
                timeout="200ms",
            )
            # a reload with discovery's current list of "web": es-b2 stays, es-b stays out
            result = await monitor.apply(faster, {"web": [kept, moved]})
            assert result.added == [] and result.removed == []
            assert sorted(result.changed) == ["es-a", "es-b2", "es-c"]  # the timeout is a probe setting
            result = await monitor.apply(faster)  # the file's lists again: es-b back, es-b2 gone
            assert result.added == ["es-b"] and result.removed == ["es-b2"]
            rounds = monitor.rounds
            await asyncio.sleep(2.2)
            assert monitor.rounds - rounds >= 3  # two intervals per second now
            assert all(offset < 0.5 for offset, _ in monitor.schedule())
        finally:
            stop.set()
            await task
            await monitor.close()
        assert connections_to({a.port, b.port, c.port}) == 0

    asyncio.run(scenario())


# --- the recovery service ---------------------------------------------------------------------------

LABELS = RESTART_LABELS


def recovery_config(config: Path) -> dict[str, Any]:
    return yaml.safe_load(config.read_text())


def test_recovery_reload_rotates_the_token_and_applies_the_allow_list(stack: Stack) -> None:
    down = f"http://127.0.0.1:{free_port()}/health"  # nothing answers: a restart is due (dry run)
    service = start_recovery(
        stack,
        [app_cluster([("es-1", "primary", down)])],
        {
            "allow": {},
            "dry_run": True,
            "clusters": {"web": {"restart_commands": {"es-1": ["true"]}}},
        },
    )
    metrics = httpx.get(service.url + "/metrics").text
    assert metric_value(metrics, "tierwatch_recovery_config_last_reload_successful") == 1
    loaded_at = metric_value(metrics, "tierwatch_recovery_config_last_reload_success_timestamp_seconds")
    service.post(payload(alert("AppInstanceDown", LABELS)))
    wait_for(lambda: service.events("blocked"), 10, "blocked: not in the allow-list")

    new_token = "rotated-t0ken-Also-Secret"
    data = recovery_config(service.config)
    Path(data["recovery"]["auth"]["bearer_token_file"]).write_text(new_token + "\n")
    data["recovery"]["allow"] = {"AppInstanceDown": "restart_instance"}
    write_atomically(service.config, data)
    service.proc.send_signal(signal.SIGHUP)

    def reloaded() -> bool:
        text = httpx.get(service.url + "/metrics").text
        return (
            metric_value(text, "tierwatch_recovery_config_last_reload_success_timestamp_seconds") or 0
        ) > loaded_at

    wait_for(reloaded, 10, "recovery reload")
    assert service.post(payload(alert("AppInstanceDown", LABELS))).status_code == 401  # the old token
    accepted = service.post(
        payload(alert("AppInstanceDown", LABELS, starts_at="2026-11-26T21:01:00Z")), token=new_token
    )
    assert accepted.status_code == 200
    [outcome] = service.wait_outcome()
    assert outcome["outcome"] == "dry_run" and outcome["action"] == "restart_instance"
    assert service.proc.poll() is None
    assert TOKEN not in service.log.read_text() and new_token not in service.log.read_text()
    service.stop()


def test_recovery_refuses_a_bad_reload_and_an_unauthenticated_one(stack: Stack) -> None:
    backend = start_http_backend(stack, "es-1")
    service = start_recovery(
        stack, [app_cluster([("es-1", "primary", backend.url)])], {"allow": {}, "dry_run": True}
    )
    reload_url = service.url + "/-/reload"
    good = recovery_config(service.config)
    assert httpx.post(reload_url).status_code == 401
    assert httpx.post(reload_url, headers={"Authorization": "Bearer wrong"}).status_code == 401
    assert httpx.get(reload_url).status_code == 405
    auth = {"Authorization": f"Bearer {TOKEN}"}

    def refused_with(data: dict[str, Any], expected: str) -> None:
        write_atomically(service.config, data)
        response = httpx.post(reload_url, headers=auth, timeout=10)
        assert response.status_code == 500, response.text
        assert any(expected in p for p in response.json()["problems"]), response.text
        text = httpx.get(service.url + "/metrics").text
        assert metric_value(text, "tierwatch_recovery_config_last_reload_successful") == 0

    invalid = json.loads(json.dumps(good))
    invalid["recovery"]["allow"] = {"AppInstanceDown": "no_such_action"}
    refused_with(invalid, "recovery.allow.AppInstanceDown")
    moved = json.loads(json.dumps(good))
    moved["recovery"]["state_dir"] = str(stack.directory("elsewhere"))
    refused_with(moved, "recovery.state_dir: cannot change without a restart")
    rotated = json.loads(json.dumps(good))
    other_token = stack.path("secrets", "other-token")
    other_token.write_text("never-used-Token\n")
    rotated["recovery"]["auth"]["bearer_token_file"] = str(other_token)
    rotated["recovery"]["state_dir"] = str(stack.directory("elsewhere"))
    refused_with(rotated, "recovery.state_dir")
    # every refusal kept the old config, its token included
    assert service.post(payload(alert("AppInstanceDown", LABELS))).status_code == 200
    assert (
        service.post(payload(alert("AppInstanceDown", LABELS)), token="never-used-Token").status_code == 401
    )
    write_atomically(service.config, good)
    assert httpx.post(reload_url, headers=auth, timeout=10).status_code == 200
    text = httpx.get(service.url + "/metrics").text
    assert metric_value(text, "tierwatch_recovery_config_last_reload_successful") == 1
    service.stop()
