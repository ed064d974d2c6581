"""Hostile and broken config files: each is refused with ``FILE: what is wrong`` and exit 1 — never a
traceback, never a secret — and every secret file is read once, at load time, by one reader."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tierwatch.config import ConfigError, LoadedConfig, RecoverySettings, load_config, yaml_file
from tierwatch.config.secrets import MAX_SECRET_BYTES
from tierwatch.recovery.actions.base import ActionContext, AlertRef
from tierwatch.recovery.auth import Authenticator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
SECRET = "s3cr3t-Hunter2-do-not-print"
MIB = 1024 * 1024


def base(**overrides: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "clusters": [
            {
                "name": "web",
                "tier": "app",
                "targets": [{"name": "es-1", "region": "primary", "url": "http://127.0.0.1:3001/health"}],
            }
        ],
    }
    data.update(overrides)
    return data


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tierwatch", *args], capture_output=True, text=True, timeout=60
    )


def assert_refused(
    result: subprocess.CompletedProcess[str], path: Path, expected: str, *secrets: str
) -> list[str]:
    """Exit 1, no traceback, a ``FILE: ...`` line containing ``expected``, no secret anywhere."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    lines = [line for line in result.stderr.splitlines() if line.startswith(f"{path}:")]
    assert any(expected in line for line in lines), result.stderr
    for secret in secrets:
        assert secret not in output, output
    return lines


def check_config(path: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_cli("check-config", *extra, str(path))


def refused(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    for problem in info.value.problems:
        assert problem.startswith(f"{path}:"), problem
    return info.value.problems


# --- item 12: encoding, nesting, size ---------------------------------------------------------------


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_non_utf8_config_is_refused(tmp_path: Path, command: str) -> None:
    path = tmp_path / "latin1.yml"
    text = yaml.safe_dump(base(), sort_keys=False).replace("primary", "prim\xe4ry")
    path.write_bytes(text.encode("latin-1"))
    line = next(i for i, t in enumerate(text.splitlines(), 1) if "prim" in t)
    args = ["check-config", str(path)] if command == "check-config" else ["serve", "--config", str(path)]
    assert_refused(run_cli(*args), path, f"{path}:{line}: not valid UTF-8 text")


@pytest.mark.parametrize("command", ["check-config", "serve"])
def test_deeply_nested_flow_sequences_are_refused(tmp_path: Path, command: str) -> None:
    path = tmp_path / "deep.yml"
    path.write_text("clusters: " + "[" * 500 + "]" * 500 + "\n")
    args = ["check-config", str(path)] if command == "check-config" else ["serve", "--config", str(path)]
    assert_refused(run_cli(*args), path, f"{path}:1: nested deeper than 32 levels")


def test_nesting_limit_is_exact(write_config: Callable[..., Path]) -> None:
    def nested(levels: int) -> Any:
        value: Any = "x"
        for _ in range(levels - 1):  # the top-level mapping is the first level
            value = [value]
        return value

    assert not [p for p in _problems(write_config(base(colour=nested(32)))) if "nested" in p]
    assert any("nested deeper than 32 levels" in p for p in _problems(write_config(base(colour=nested(33)))))


def _problems(path: Path) -> list[str]:
    try:
        load_config(path, resolve_secrets=False)
    except ConfigError as exc:
        return exc.problems
    return []


def test_a_50_mib_config_is_refused_by_the_size_limit(tmp_path: Path) -> None:
    path = tmp_path / "huge.yml"
    with path.open("w") as out:
        out.write(yaml.safe_dump(base(), sort_keys=False))
        line = "# " + "x" * 1021 + "\n"
        for _ in range(50 * 1024):
            out.write(line)
    assert path.stat().st_size >= 50 * MIB
    assert_refused(check_config(path), path, f"{path}: config file is larger than the limit of 1 MiB")


def test_size_limit_boundary(tmp_path: Path) -> None:
    text = yaml.safe_dump(base(), sort_keys=False)
    path = tmp_path / "padded.yml"
    path.write_text(text + "#" * (MIB - len(text) - 1) + "\n")
    assert path.stat().st_size == MIB
    load_config(path)
    path.write_text(text + "#" * (MIB - len(text)) + "\n")
    [problem] = refused(path)
    assert problem == f"{path}: config file is larger than the limit of 1 MiB"


@pytest.mark.parametrize("parser", ["libyaml", "python"])
def test_both_parsers_enforce_the_limits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, parser: str
) -> None:
    if parser == "python":  # PyYAML built without libyaml
        monkeypatch.setattr(yaml_file, "_Loader", yaml_file._PythonLoader)
    else:
        assert yaml_file._Loader is not yaml_file._PythonLoader  # the fast parser is the one in use
    deep, dup = tmp_path / "deep.yml", tmp_path / "dup.yml"
    deep.write_text("clusters: " + "[" * 500 + "]" * 500 + "\n")
    dup.write_text(DUPLICATE_URL)
    assert "nested deeper than 32 levels" in refused(deep)[0]
    assert any("duplicate key 'url' on lines 7 and 8" in p for p in refused(dup))
    test_anchors_and_merge_keys_still_work(tmp_path)


@pytest.mark.parametrize("value", ["2024-02-30", "1" * 5000], ids=["impossible-date", "5000-digits"])
def test_unreadable_scalars_are_yaml_errors(tmp_path: Path, value: str) -> None:
    path = tmp_path / "scalar.yml"
    path.write_text(yaml.safe_dump(base(), sort_keys=False) + f"listen: {value}\n")
    line = len(path.read_text().splitlines())
    assert_refused(check_config(path), path, f"{path}:{line}: invalid YAML: expected a valid value")


# --- item 13: non-finite numbers ----------------------------------------------------------------------

RECOVERY = {"auth": {"bearer_token_file": "/run/secrets/token"}}


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    node = data
    *parents, last = dotted.split(".")
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


@pytest.mark.parametrize(
    "key",
    [
        "monitor.timeout",
        "monitor.interval",
        "circuit_breaker.reset_timeout",
        "recovery.action_timeout",
        "recovery.cooldown",
        "recovery.settle",
        "recovery.rate_limit.per",
        "recovery.clusters.web.step_interval",
        "recovery.clusters.web.sentinel_wait",
        "recovery.clusters.web.max_error_ratio",
    ],
)
@pytest.mark.parametrize("value", [float("nan"), float("inf"), "nan", "inf", "-inf", "1e999"])
def test_non_finite_numbers_are_refused(write_config: Callable[..., Path], key: str, value: Any) -> None:
    data = _set(base(recovery=dict(RECOVERY)), key, value)
    path = write_config(data)
    problems = [p for p in _problems(path) if f": {key}: " in p]
    assert problems, f"{key}={value!r} accepted"
    expected = "input should be a finite number" if key.endswith("ratio") else "expected a finite duration"
    assert all(p.endswith(f": {key}: {expected}") for p in problems), problems


def test_nan_timeout_via_cli(write_config: Callable[..., Path]) -> None:
    path = write_config(base(monitor={"interval": "5s", "timeout": float("nan")}))
    assert ".nan" in path.read_text()
    assert_refused(check_config(path), path, "monitor.timeout: expected a finite duration")


# --- item 14: passwords in query strings, secret files, names in key paths ----------------------------


@pytest.mark.parametrize(
    ("tier", "url"),
    [
        ("postgres", f"postgresql://u@127.0.0.1/db?password={SECRET}"),
        ("postgres", f"postgres://u@127.0.0.1/db?sslmode=disable&sslpassword={SECRET}"),
        ("postgres", f"postgresql://u@127.0.0.1/db?pass%77ord={SECRET}"),
        ("redis", f"redis://127.0.0.1/0?password={SECRET}"),
        ("redis", f"unix:///run/redis.sock?db=0&password={SECRET}"),
        ("app", f"http://127.0.0.1:3001/health?PASSWORD={SECRET}"),
    ],
)
def test_password_in_query_string_is_refused_without_echo(
    write_config: Callable[..., Path], tier: str, url: str
) -> None:
    data = base(clusters=[{"name": "c", "tier": tier, "targets": [{"name": "t", "region": "r", "url": url}]}])
    path = write_config(data)
    lines = assert_refused(
        check_config(path, "--no-secrets"), path, "targets[0](t).url: URL must not", SECRET
    )
    assert any("use the cluster's password_file or password_env" in line for line in lines)


def test_passfile_and_other_query_parameters_are_fine(write_config: Callable[..., Path]) -> None:
    url = "postgresql://u@127.0.0.1/db?passfile=/run/secrets/pgpass&sslmode=disable&application_name=tw"
    data = base(
        clusters=[{"name": "c", "tier": "postgres", "targets": [{"name": "t", "region": "r", "url": url}]}]
    )
    load_config(write_config(data))


def test_non_utf8_password_file_names_the_file_not_the_bytes(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    secret_file = tmp_path / "redis-password"
    secret_file.write_bytes(b"pw-\xe9t\xe9-" + SECRET.encode() + b"\n")
    cluster = {
        "name": "cache",
        "tier": "redis",
        "password_file": str(secret_file),
        "targets": [{"name": "r1", "region": "r", "url": "redis://127.0.0.1:6379"}],
    }
    path = write_config(base(clusters=[cluster]))
    result = check_config(path)
    assert_refused(
        result,
        path,
        f"clusters[0](cache).password_file: password file {secret_file} is not valid UTF-8 text",
        SECRET,
        "pw-",
    )
    assert "0xe9" not in result.stderr and "\\xe9" not in result.stderr and "\xe9" not in result.stderr
    assert check_config(path, "--no-secrets").returncode == 0


def test_invalid_name_is_not_printed_in_key_paths(write_config: Callable[..., Path]) -> None:
    bad_name = f"{SECRET} oops"
    data = base(
        clusters=[
            {
                "name": bad_name,
                "tier": "postgress",
                "targets": [{"name": f"t {SECRET}", "region": "r", "url": "http://127.0.0.1/"}],
            }
        ]
    )
    path = write_config(data)
    lines = assert_refused(check_config(path), path, "clusters[0].name: expected a name", SECRET)
    assert any("clusters[0].tier: expected one of" in line for line in lines)
    assert any("clusters[0].targets[0].name: expected a name" in line for line in lines)


def test_invalid_names_in_the_recovery_section_are_not_printed(write_config: Callable[..., Path]) -> None:
    recovery = {
        "auth": {"bearer_token_file": "/run/secrets/token"},
        "clusters": {SECRET + "!": {}, "web": {"systemd_units": {SECRET + " x": "app.service"}}},
    }
    path = write_config(base(recovery=recovery))
    lines = assert_refused(check_config(path, "--no-secrets"), path, "no cluster named in clusters", SECRET)
    assert any("recovery.clusters.<key>: no cluster named in clusters" in line for line in lines)
    assert any("recovery.clusters.web.systemd_units.<key>: no target named" in line for line in lines)


# --- item 15: duplicate keys -------------------------------------------------------------------------

DUPLICATE_URL = """\
clusters:
  - name: web
    tier: app
    targets:
      - name: es-1
        region: primary
        url: http://127.0.0.1:3001/health
        url: http://127.0.0.1:3002/health
"""


def test_duplicate_key_is_refused_with_both_lines(tmp_path: Path) -> None:
    path = tmp_path / "dup.yml"
    path.write_text(DUPLICATE_URL)
    assert_refused(
        check_config(path),
        path,
        f"{path}:8: clusters[0](web).targets[0](es-1).url: duplicate key 'url' on lines 7 and 8",
    )


def test_duplicate_top_level_and_flow_keys(tmp_path: Path) -> None:
    path = tmp_path / "dup2.yml"
    path.write_text(
        "monitor: {interval: 5s, interval: 10s}\n"
        + yaml.safe_dump(base(), sort_keys=False)
        + "monitor: {timeout: 1s}\n"
    )
    problems = refused(path)
    last = len(path.read_text().splitlines())
    assert (
        f"{path}:1: monitor.interval: duplicate key 'interval' twice on line 1; give each key once"
        in problems
    )
    assert (
        f"{path}:{last}: monitor: duplicate key 'monitor' on lines 1 and {last}; give each key once"
        in problems
    )


def test_anchors_and_merge_keys_still_work(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yml"
    path.write_text(
        "clusters:\n"
        "  - name: web\n"
        "    tier: app\n"
        "    targets:\n"
        "      - &first {name: es-1, region: primary, url: 'http://127.0.0.1:3001/'}\n"
        "      - {<<: *first, name: es-2, region: failover}\n"
    )
    targets = load_config(path).config.clusters[0].targets
    assert [(t.name, t.region, t.url) for t in targets] == [
        ("es-1", "primary", "http://127.0.0.1:3001/"),
        ("es-2", "failover", "http://127.0.0.1:3001/"),
    ]


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    """1000 aliases of a cluster that holds 1000 aliases of one target: 6 kB of YAML, 7M values."""
    target = "&t {name: es-1, region: r, url: 'http://127.0.0.1/'}"
    path = tmp_path / "bomb.yml"
    path.write_text(
        "clusters:\n"
        "  - &c\n"
        "    name: web\n"
        "    tier: app\n"
        f"    targets: [{target}{', *t' * 999}]\n" + "  - *c\n" * 999
    )
    assert_refused(check_config(path), path, "too many nodes once aliases are expanded")


# --- issue 12: one secret-file reader, resolved at load time -------------------------------------------


def recovery_config(tmp_path: Path, token: Path, admin: Path) -> Path:
    data = base(
        clusters=[
            {
                "name": "main-db",
                "tier": "postgres",
                "targets": [
                    {"name": "pg-1", "region": "primary", "url": "postgresql://tw@127.0.0.1/postgres"}
                ],
            }
        ],
        recovery={
            "state_dir": str(tmp_path / "state"),
            "auth": {"bearer_token_file": str(token)},
            "allow": {"PostgresPrimaryDown": "pg_promote"},
            "clusters": {"main-db": {"admin_user": "postgres", "admin_password_file": str(admin)}},
        },
    )
    path = tmp_path / "recovery.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_recovery_secrets_are_resolved_at_load_time(tmp_path: Path) -> None:
    token, admin = tmp_path / "token", tmp_path / "admin"
    token.write_text(SECRET + "\n")
    admin.write_text("admin-" + SECRET + "\r\n")
    loaded = load_config(recovery_config(tmp_path, token, admin))
    token.unlink()
    admin.unlink()  # read once, at load: later uses need no file
    auth_secret = loaded.auth_secret()
    admin_secret = loaded.admin_password_for("main-db")
    assert auth_secret is not None and auth_secret.reveal() == SECRET
    assert admin_secret is not None and admin_secret.reveal() == "admin-" + SECRET
    assert SECRET not in repr(loaded) and SECRET not in str(loaded.secrets)
    settings = loaded.config.recovery
    assert isinstance(settings, RecoverySettings)
    authenticator = Authenticator.from_settings(settings.auth, auth_secret)
    assert authenticator.check(f"Bearer {SECRET}") and not authenticator.check("Bearer nope")
    ctx = ActionContext(
        loaded=loaded,
        settings=settings,
        cluster=loaded.config.clusters[0],
        alert=AlertRef("PostgresPrimaryDown", "f", "2024-01-01T00:00:00Z", {}),
        dry_run=True,
        audit=lambda *a, **k: None,
        point_of_no_return=_noop,
    )
    password = ctx.admin_password()
    assert password is not None and password.reveal() == "admin-" + SECRET


async def _noop() -> None:
    return None


def test_missing_recovery_secrets_are_config_errors(tmp_path: Path) -> None:
    path = recovery_config(tmp_path, tmp_path / "no-token", tmp_path / "no-admin")
    for args in (["check-config", str(path)], ["recover", "--config", str(path)]):
        lines = assert_refused(
            run_cli(*args),
            path,
            f"recovery.auth.bearer_token_file: cannot read bearer token file {tmp_path}/no-token",
        )
        assert any(
            "recovery.clusters.main-db.admin_password_file: cannot read admin password file "
            f"{tmp_path}/no-admin" in line
            for line in lines
        )
    assert check_config(path, "--no-secrets").returncode == 0


def test_basic_auth_password_file_is_resolved(tmp_path: Path) -> None:
    password = tmp_path / "basic"
    password.write_bytes(b"\xff\xfe" + SECRET.encode())
    data = base(recovery={"auth": {"basic": {"username": "am", "password_file": str(password)}}})
    path = tmp_path / "basic.yml"
    data["recovery"]["state_dir"] = str(tmp_path / "state")
    path.write_text(yaml.safe_dump(data))
    assert_refused(
        run_cli("recover", "--config", str(path)),
        path,
        f"recovery.auth.basic.password_file: password file {password} is not valid UTF-8 text",
        SECRET,
    )
    password.write_text(SECRET)
    loaded = load_config(path)
    secret = loaded.auth_secret()
    assert secret is not None and secret.reveal() == SECRET


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "is empty"),
        (b"\n", "is empty"),
        (b"x" * (MAX_SECRET_BYTES + 1), f"is larger than {MAX_SECRET_BYTES // 1024} KiB"),
    ],
)
def test_secret_file_limits(
    write_config: Callable[..., Path], tmp_path: Path, content: bytes, expected: str
) -> None:
    secret_file = tmp_path / "pw"
    secret_file.write_bytes(content)
    cluster = {
        "name": "cache",
        "tier": "redis",
        "password_file": str(secret_file),
        "targets": [{"name": "r1", "region": "r", "url": "redis://127.0.0.1:6379"}],
    }
    [problem] = refused(write_config(base(clusters=[cluster])))
    assert f"clusters[0](cache).password_file: password file {secret_file} {expected}" in problem


def test_secret_file_loses_exactly_one_trailing_newline(
    write_config: Callable[..., Path], tmp_path: Path
) -> None:
    secret_file = tmp_path / "pw"
    cluster = {
        "name": "cache",
        "tier": "redis",
        "password_file": str(secret_file),
        "targets": [{"name": "r1", "region": "r", "url": "redis://127.0.0.1:6379"}],
    }
    path = write_config(base(clusters=[cluster]))
    for content, expected in ((" pw \n", " pw "), ("pw\r\n", "pw"), ("pw\n\n", "pw\n"), ("pw", "pw")):
        secret_file.write_text(content, newline="")
        loaded: LoadedConfig = load_config(path)
        secret = loaded.password_for("cache")
        assert secret is not None and secret.reveal() == expected, content


def test_non_utf8_password_env(write_config: Callable[..., Path], monkeypatch: pytest.MonkeyPatch) -> None:
    cluster = {
        "name": "cache",
        "tier": "redis",
        "password_env": "TW_TEST_LATIN1_PW",
        "targets": [{"name": "r1", "region": "r", "url": "redis://127.0.0.1:6379"}],
    }
    monkeypatch.setenv("TW_TEST_LATIN1_PW", "pw-\udce9-" + SECRET)  # how Python shows a non-UTF-8 byte
    [problem] = refused(write_config(base(clusters=[cluster])))
    assert "password_env: environment variable TW_TEST_LATIN1_PW is not valid UTF-8 text" in problem
    assert SECRET not in problem and "pw-" not in problem


def test_examples_stay_valid() -> None:
    for name in ("tierwatch.yml", "recovery.yml"):
        result = check_config(EXAMPLES / name, "--no-secrets")
        assert result.returncode == 0, result.stderr
