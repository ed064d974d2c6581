"""deploy/systemd/ holds together: both units pass `systemd-analyze verify` with no warning, are hardened
(a dynamic user, a read-only system, no privileges; `systemd-analyze security` rates them OK), reload
with SIGHUP, run the CLI subcommand they are for on the ports the image exposes, and the recovery
service keeps its state where examples/recovery.yml says."""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
UNITS = ROOT / "deploy" / "systemd"
INSTALLED_BINARY = "/opt/tierwatch/bin/tierwatch"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
SERVICES = {"tierwatch-exporter.service": "serve", "tierwatch-recovery.service": "recover"}
# batch jobs (docs/backups.md): each service runs from its timer (schedule, most random delay in seconds)
BATCH = {
    "tierwatch-restore-test.service": ("restore-test", "*-*-* 03:30:00", 3600),
    "tierwatch-redis-snapshot.service": ("redis-snapshot", "hourly", 600),
}
HARDENING = {
    "DynamicUser": "yes",
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "CapabilityBoundingSet": "",
    "RestrictSUIDSGID": "yes",
    "SystemCallArchitectures": "native",
}
BATCH_HARDENING = {k: v for k, v in HARDENING.items() if k not in ("DynamicUser", "CapabilityBoundingSet")}


def directives(path: Path) -> dict[str, list[str]]:
    """Every ``Key=value`` of a unit file, values in order (a key may repeat)."""
    return directives_of(path.read_text())


def directives_of(text: str) -> dict[str, list[str]]:
    """``directives`` of unit text."""
    found: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, value = line.split("=", 1)
            found.setdefault(key.strip(), []).append(value.strip())
    return found


def analyze(*args: str) -> subprocess.CompletedProcess[str]:
    assert SYSTEMD_ANALYZE, "systemd-analyze (Debian package systemd; scripts/setup installs it) is needed"
    return subprocess.run([SYSTEMD_ANALYZE, *args], capture_output=True, text=True, check=False, timeout=60)


def installable_copy(name: str, directory: Path, text: str | None = None) -> Path:
    """The unit with the venv's tierwatch in place of /opt/tierwatch's: verify checks that the command
    exists, and this machine has tierwatch in its venv, not under /opt."""
    binary = Path(sys.executable).with_name("tierwatch")
    assert binary.is_file(), binary
    text = (UNITS / name).read_text() if text is None else text
    assert INSTALLED_BINARY in text
    path = directory / name
    path.write_text(text.replace(INSTALLED_BINARY, str(binary)))
    return path


def test_the_units_are_there() -> None:
    assert {p.name for p in UNITS.glob("*.service")} == set(SERVICES) | set(BATCH)
    assert {p.name for p in UNITS.glob("*.timer")} == {name.replace(".service", ".timer") for name in BATCH}


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_systemd_analyze_verify_passes_without_warnings(name: str, tmp_path: Path) -> None:
    done = analyze("verify", str(installable_copy(name, tmp_path)))
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


def test_verify_reports_a_broken_unit(tmp_path: Path) -> None:
    text = (UNITS / "tierwatch-exporter.service").read_text().replace("ProtectSystem=", "ProtectSytem=")
    done = analyze("verify", str(installable_copy("tierwatch-exporter.service", tmp_path, text)))
    assert "Unknown key 'ProtectSytem'" in done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_units_are_hardened(name: str, tmp_path: Path) -> None:
    found = directives(UNITS / name)
    for key, value in HARDENING.items():
        assert found.get(key) == [value], f"{name}: {key}={found.get(key)}"
    done = analyze("security", "--offline=yes", str(installable_copy(name, tmp_path)))
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", done.stdout + done.stderr)
    assert match, done.stdout + done.stderr
    assert float(match.group(1)) <= 2.0 and match.group(2) == "OK", match.group(0)


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_units_reload_with_sighup_and_run_their_subcommand(name: str) -> None:
    found = directives(UNITS / name)
    assert found["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    # death by SIGHUP is a clean exit to systemd: only Restart=always brings back a process without a handler
    assert found["Restart"] == ["always"]
    argv = shlex.split(found["ExecStart"][0])
    assert argv[0] == INSTALLED_BINARY and argv[1] == SERVICES[name]
    options = dict(zip(argv[2::2], argv[3::2], strict=True))
    assert set(options) == {"--config", "--listen"}
    port = options["--listen"].rsplit(":", 1)[1]
    assert "EXPOSE 9489 9490" in (ROOT / "deploy" / "Dockerfile").read_text()
    assert port == {"serve": "9489", "recover": "9490"}[SERVICES[name]]
    example = {"serve": "tierwatch.yml", "recover": "recovery.yml"}[SERVICES[name]]
    assert Path(options["--config"]).name == example and (ROOT / "examples" / example).is_file()


def test_recovery_state_directory_is_the_examples_state_dir() -> None:
    found = directives(UNITS / "tierwatch-recovery.service")
    state_dir = yaml.safe_load((ROOT / "examples" / "recovery.yml").read_text())["recovery"]["state_dir"]
    assert found["StateDirectory"] == [Path(state_dir).relative_to("/var/lib").as_posix()]
    assert found["StateDirectoryMode"] == ["0700"]
    assert "StateDirectory" not in directives(UNITS / "tierwatch-exporter.service")


def documented_drop_in() -> str:
    """The ``ini`` drop-in of deploy/systemd/README.md (TLS and basic auth), unindented."""
    text = (UNITS / "README.md").read_text()
    match = re.search(r"```ini\n(.*?)\n\s*```", text, re.S)
    assert match, "deploy/systemd/README.md: no ```ini drop-in"
    return "\n".join(line.strip() for line in match.group(1).splitlines())


def test_the_documented_web_config_drop_in_verifies_and_parses(tmp_path: Path) -> None:
    """The drop-in adds credentials and --web.config.file: merged into the exporter unit it passes
    `systemd-analyze verify` with no warning, and its command line is one `tierwatch serve` accepts."""
    drop_in = documented_drop_in()
    found = directives_of(drop_in)
    assert found["ExecStart"][0] == "" and len(found["ExecStart"]) == 2  # reset, then the new command
    assert sorted(v.split(":", 1)[0] for v in found["LoadCredential"]) == ["tls.crt", "tls.key", "web.yml"]
    argv = shlex.split(found["ExecStart"][1])
    base = shlex.split(directives(UNITS / "tierwatch-exporter.service")["ExecStart"][0])
    assert argv[: len(base)] == base and argv[len(base) :] == ["--web.config.file", "%d/web.yml"]

    # verify: the unit with the drop-in's lines at the end of its [Service] section
    credentials = tmp_path / "credentials"
    credentials.mkdir()
    lines = []
    for line in drop_in.splitlines()[1:]:  # without the [Service] header
        if line.startswith("LoadCredential="):  # sources that exist on this machine
            name, _ = line.split("=", 1)[1].split(":", 1)
            (credentials / name).write_text("x\n")
            line = f"LoadCredential={name}:{credentials / name}"
        lines.append(line)
    unit = (UNITS / "tierwatch-exporter.service").read_text()
    merged = unit.replace("\n[Install]", "\n" + "\n".join(lines) + "\n\n[Install]")
    assert merged != unit
    done = analyze("verify", str(installable_copy("tierwatch-exporter.service", tmp_path, merged)))
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr

    # the command line: `serve` takes --web.config.file (a missing file is its error, not the option's)
    missing = tmp_path / "web.yml"
    run = subprocess.run(
        [sys.executable, "-m", "tierwatch", *argv[1:-1], str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert run.returncode == 1 and str(missing) in run.stderr and "unrecognized" not in run.stderr, run.stderr


@pytest.mark.parametrize("name", sorted(BATCH))
def test_batch_units_and_their_timers_verify_without_warnings(name: str, tmp_path: Path) -> None:
    timer = name.replace(".service", ".timer")
    (tmp_path / timer).write_text((UNITS / timer).read_text())
    done = analyze("verify", str(installable_copy(name, tmp_path)), str(tmp_path / timer))
    assert done.returncode == 0 and not (done.stdout + done.stderr).strip(), done.stdout + done.stderr


@pytest.mark.parametrize("name", sorted(BATCH))
def test_batch_units_are_hardened_oneshots_running_their_subcommand(name: str, tmp_path: Path) -> None:
    found = directives(UNITS / name)
    for key, value in BATCH_HARDENING.items():
        assert found.get(key) == [value], f"{name}: {key}={found.get(key)}"
    # root only for what it needs: a bounded capability set, no ambient ones
    assert found["CapabilityBoundingSet"][0] and found["AmbientCapabilities"] == [""]
    assert "CAP_SYS_ADMIN" not in found["CapabilityBoundingSet"][0]
    assert found["Type"] == ["oneshot"] and "Restart" not in found
    done = analyze("security", "--offline=yes", str(installable_copy(name, tmp_path)))
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", done.stdout + done.stderr)
    assert match and float(match.group(1)) <= 3.0 and match.group(2) == "OK", done.stdout + done.stderr

    argv = shlex.split(found["ExecStart"][0])
    assert argv[0] == INSTALLED_BINARY and argv[1] == BATCH[name][0]
    assert argv[2:] == ["--config", "/etc/tierwatch/tierwatch.yml"]
    run = subprocess.run(
        [sys.executable, "-m", "tierwatch", *argv[1:], "--help"], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0 and "--config" in run.stdout, run.stderr


@pytest.mark.parametrize("name", sorted(BATCH))
def test_batch_timers_are_persistent_and_spread(name: str) -> None:
    timer = directives(UNITS / name.replace(".service", ".timer"))
    _, calendar, delay = BATCH[name]
    assert timer["OnCalendar"] == [calendar] and timer["Persistent"] == ["true"]
    value = timer["RandomizedDelaySec"][0]
    seconds = int(value[:-1]) * {"h": 3600, "m": 60, "s": 1}[value[-1]]
    assert 0 < seconds <= delay
    assert timer.get("Unit") is None  # the service of the same name
    done = analyze("calendar", calendar)
    assert done.returncode == 0, done.stderr
