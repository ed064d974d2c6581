"""Load and validate the tierwatch YAML config.

Every problem is reported as ``FILE:LINE: key.path: what was expected``; all problems of a file are
collected before failing. Values are never echoed back, so a secret pasted in the wrong place does not
end up in a terminal or a log.
"""

from __future__ import annotations

import binascii
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
)
from pydantic_core import PydanticCustomError

from ..durations import parse_duration
from ..tier_catalog import CLUSTER_KEY_TIER, CLUSTER_TIERS, HTTP_TIERS, TARGET_KEY_TIER, URL_SCHEMES
from .backups import BackupsSettings, backups_problems
from .cluster_backup import BackupConfig, cluster_backup_problems
from .discovery import DiscoveryConfig, discovery_problems
from .recovery import RecoverySettings
from .secrets import Secret, SecretError, read_secret_env, read_secret_file
from .service_discovery import ServiceDiscovery, service_discovery_problems
from .target import NAME_PATTERN, Name, TargetConfig, _Strict
from .yaml_file import YamlFileError, read_yaml_file

# the cluster tiers of the tier catalogue, as a Literal built at import time (pydantic checks it)
Tier = Literal[CLUSTER_TIERS]  # type: ignore[valid-type]
QueueKind = Literal["bullmq", "celery", "rq", "stream", "list"]
Duration = Annotated[float, BeforeValidator(parse_duration)]


class ConfigError(Exception):
    """A config file failed to load; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class MonitorSettings(_Strict):
    interval: Duration = 5.0
    timeout: Duration = 2.0
    # probes in flight at once; the rest wait for their slot without their latency being measured
    max_concurrency: Annotated[int, Field(ge=1, le=100_000)] = 256


class MetricsSettings(_Strict):
    # opt-in series (metric_catalog ``opt_in``): Prometheus pays for every series of every target
    probe_duration_histogram: bool = False  # tierwatch_probe_duration_seconds per target (16 series)
    http_response_size: bool = False  # tierwatch_http_response_size_bytes per HTTP target


class BreakerSettings(_Strict):
    failure_threshold: Annotated[int, Field(ge=1, le=1000)] = 5
    reset_timeout: Duration = 30.0


class SentinelConfig(_Strict):
    master_name: Annotated[str, Field(min_length=1, max_length=128)]
    targets: Annotated[list[TargetConfig], Field(min_length=1)]


class PatroniMember(_Strict):
    """One Patroni member: the PostgreSQL target it manages and its REST API (read-only GETs)."""

    target: Name
    url: str
    tls_ca_file: str | None = None
    tls_skip_verify: bool = False


class PatroniConfig(_Strict):
    """Patroni is in charge of this cluster: the exporter reads its REST API beside its own PostgreSQL
    probe, and the recovery service never promotes, rewinds or demotes; it waits for Patroni's
    election (``recovery.clusters.<name>.patroni_wait``) and moves only the writes."""

    # Patroni's ``scope``; when set, a member reporting another scope is not counted
    scope: Annotated[str, Field(min_length=1, max_length=128)] | None = None
    members: Annotated[list[PatroniMember], Field(min_length=1)]
    # bytes read from one REST answer (a /patroni document is about 1 KiB)
    max_body_bytes: Annotated[int, Field(ge=1024, le=4 * 1024 * 1024)] = 64 * 1024


class QueueConfig(_Strict):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    kind: QueueKind
    prefix: str | None = None


class ClusterConfig(_Strict):
    name: Name
    tier: Tier
    # targets found at run time (config/discovery.py); declared before targets, which it makes optional
    discovery: list[DiscoveryConfig] = []
    targets: list[TargetConfig] = Field(default_factory=list, validate_default=True)
    vip: str | None = None
    vip_header: str = "X-Served-By"
    password_file: str | None = None
    password_env: Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] | None = None
    sentinel: SentinelConfig | None = None
    patroni: PatroniConfig | None = None
    queues: list[QueueConfig] = []
    backup: BackupConfig | None = None
    # PostgreSQL: per-table vacuum figures for this many tables of the probed database, those with the
    # most dead tuples (0 = none); the series per target grow by 4 per table
    top_tables: Annotated[int, Field(ge=0, le=50)] = 5

    @field_validator("targets")
    @classmethod
    def _some_targets(cls, value: list[TargetConfig], info: ValidationInfo) -> list[TargetConfig]:
        if not value and not info.data.get("discovery"):
            raise PydanticCustomError(
                "too_short", "List should have at least 1 item (or the cluster a discovery list)"
            )
        return value


class LogSettings(_Strict):
    format: Literal["text", "json"] = "text"
    level: Literal["debug", "info", "warning", "error"] = "info"


class TierwatchConfig(_Strict):
    monitor: MonitorSettings = MonitorSettings()
    circuit_breaker: BreakerSettings = BreakerSettings()
    log: LogSettings = LogSettings()
    metrics: MetricsSettings = MetricsSettings()
    listen: str = "127.0.0.1:9489"
    clusters: Annotated[list[ClusterConfig], Field(min_length=1)]
    recovery: RecoverySettings | None = None
    backups: BackupsSettings | None = None  # restore tests and Redis snapshots (config/backups.py)
    # DNS records that follow primaries and regions (config/service_discovery.py)
    service_discovery: ServiceDiscovery | None = None


@dataclass(frozen=True)
class LoadedConfig:
    """A validated config plus every secret it references, read at load time (see ``secrets.py``).

    ``secrets`` is keyed by what the secret is for: ``clusters.NAME.password``, ``recovery.auth``,
    ``recovery.clusters.NAME.admin_password``; empty when loaded with ``resolve_secrets=False``.
    """

    path: Path
    config: TierwatchConfig
    secrets: dict[str, Secret]

    def password_for(self, cluster: str) -> Secret | None:
        """The password configured for ``cluster`` (password_file or password_env), if any."""
        return self.secrets.get(f"clusters.{cluster}.password")

    def admin_password_for(self, cluster: str) -> Secret | None:
        """The ``recovery.clusters.CLUSTER.admin_password_file`` secret, if configured."""
        return self.secrets.get(f"recovery.clusters.{cluster}.admin_password")

    def auth_secret(self) -> Secret | None:
        """The recovery service's bearer token or basic-auth password, if configured."""
        return self.secrets.get("recovery.auth")

    def dns_key_secret(self) -> Secret | None:
        """The TSIG key's secret (``service_discovery.key.secret_file``, base64), if configured."""
        return self.secrets.get("service_discovery.key")


def load_config(path: str | os.PathLike[str], *, resolve_secrets: bool = True) -> LoadedConfig:
    """Load, validate and (optionally) resolve the secrets of a config file.

    Raises ConfigError listing every problem found. The file is refused before parsing if larger than
    1 MiB or not UTF-8, and while parsing if nested deeper than 32 levels or holding a duplicate key.
    """
    file = Path(path)
    try:
        document = read_yaml_file(file)
    except YamlFileError as exc:
        raise ConfigError([exc.problem]) from None
    raw = document.data
    if not isinstance(raw, dict):
        raise ConfigError([f"{file}: expected a mapping at the top level (monitor, clusters, ...)"])

    locate = _Locator(file, document.root, raw)
    problems = [
        locate.problem(
            dup.path,
            f"duplicate key{_quoted_key(dup.key)} "
            + (
                f"on lines {dup.first_line} and {dup.line}"
                if dup.first_line != dup.line
                else f"twice on line {dup.line}"
            )
            + "; give each key once",
            line=dup.line,
        )
        for dup in document.duplicates
    ]
    try:
        config = TierwatchConfig.model_validate(raw)
    except ValidationError as exc:
        problems += [locate.problem(err["loc"], _expectation(err)) for err in exc.errors()]
        partial = _partial_config(raw)
        if partial is not None:
            problems += [locate.problem(loc, msg) for loc, msg in _semantic_problems(partial)]
        raise ConfigError(problems) from None

    problems += [locate.problem(loc, msg) for loc, msg in _semantic_problems(config)]
    problems += [locate.problem(loc, msg) for loc, msg in _recovery_problems(config)]
    if config.backups is not None:
        found = backups_problems(config.backups, config.clusters)
        problems += [locate.problem(loc, msg) for loc, msg in found]
    if config.service_discovery is not None:
        found = service_discovery_problems(config.service_discovery, config.clusters)
        problems += [locate.problem(loc, msg) for loc, msg in found]
    secrets: dict[str, Secret] = {}
    if resolve_secrets:
        for ref in _secret_refs(config):
            try:
                secrets[ref.name] = ref.read()
            except SecretError as exc:
                problems.append(locate.problem(ref.loc, str(exc)))
    if problems:
        raise ConfigError(problems)
    return LoadedConfig(path=file, config=config, secrets=secrets)


def _quoted_key(key: str) -> str:
    """`` 'key'`` for a key or name that is valid, else nothing (a stray one may be a pasted secret)."""
    return f" {key!r}" if re.fullmatch(NAME_PATTERN, key) else ""


def _partial_config(raw: dict[str, Any]) -> TierwatchConfig | None:
    """The parts of an invalid file that are valid on their own, so their semantic problems (duplicate
    names, bad URLs, timeout >= interval) are reported in the same run. Invalid clusters become
    placeholders so that indexes in key paths stay right."""
    placeholder = ClusterConfig.model_construct(name="-", tier="app", targets=[])
    clusters = []
    for item in raw.get("clusters") or []:
        try:
            clusters.append(ClusterConfig.model_validate(item))
        except ValidationError:
            clusters.append(placeholder)
    try:
        monitor = MonitorSettings.model_validate(raw.get("monitor") or {})
    except ValidationError:
        monitor = MonitorSettings()
    real = [c for c in clusters if c is not placeholder]
    if not real and monitor.timeout < monitor.interval:  # nothing left to check
        return None
    return TierwatchConfig.model_construct(
        monitor=monitor, circuit_breaker=BreakerSettings(), log=LogSettings(), listen="", clusters=clusters
    )


def _allowed_keys(loc: Sequence[Any]) -> list[str]:
    """The keys a mapping at ``loc`` (the unknown key's parent) accepts."""
    model: type[BaseModel] | None = TierwatchConfig
    for part in loc:
        if isinstance(part, int) or model is None:
            continue
        field = model.model_fields.get(part)
        if field is None:
            return []
        model = _model_in(field.annotation)
    return sorted(model.model_fields) if model is not None else []


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _expectation(err: Any) -> str:
    kind = err["type"]
    if kind == "extra_forbidden":
        allowed = _allowed_keys(err["loc"][:-1])
        return f"unknown key; expected one of: {', '.join(allowed)}" if allowed else "unknown key"
    if kind == "missing":
        return "required key is missing"
    if kind == "literal_error":
        return f"expected one of {err['ctx']['expected']}"
    if kind == "string_pattern_mismatch":
        return "expected a name of letters, digits, '.', '_' or '-' (at most 63 characters)"
    if kind == "value_error":
        return str(err["ctx"]["error"])
    message: str = err["msg"]
    return message[0].lower() + message[1:] if message else kind


def _semantic_problems(config: TierwatchConfig) -> Iterable[tuple[tuple[Any, ...], str]]:
    monitor = config.monitor
    if monitor.timeout >= monitor.interval:
        yield (
            ("monitor", "timeout"),
            (
                f"expected a probe timeout below monitor.interval ({monitor.interval:g}s), "
                f"got {monitor.timeout:g}s"
            ),
        )
    seen_clusters: set[str] = set()
    seen_targets: dict[str, str] = {}
    for ci, cluster in enumerate(config.clusters):
        if cluster.name == "-":
            continue  # placeholder for a cluster that failed structural validation
        if cluster.name in seen_clusters:
            yield ("clusters", ci, "name"), f"duplicate cluster name {cluster.name!r}"
        seen_clusters.add(cluster.name)
        if cluster.password_file and cluster.password_env:
            yield ("clusters", ci, "password_env"), "expected only one of password_file and password_env"
        if cluster.vip is not None:
            misplaced = _misplaced_cluster_key(cluster, "vip")
            if misplaced:
                yield ("clusters", ci, "vip"), misplaced
            else:
                problem = _url_problem(cluster.vip, URL_SCHEMES[cluster.tier])
                if problem:
                    yield ("clusters", ci, "vip"), problem
        yield from discovery_problems(cluster.tier, ("clusters", ci, "discovery"), cluster.discovery)
        for key in ("sentinel", "queues", "top_tables", "patroni"):
            misplaced = _misplaced_cluster_key(cluster, key)
            if misplaced:
                yield ("clusters", ci, key), misplaced
        if cluster.patroni is not None and cluster.tier == CLUSTER_KEY_TIER["patroni"]:
            yield from _patroni_problems(cluster, ("clusters", ci, "patroni"))
        if cluster.backup is not None:
            yield from cluster_backup_problems(cluster.tier, cluster.backup, ("clusters", ci, "backup"))
        seen_queues: set[str] = set()
        for qi, queue in enumerate(cluster.queues):
            if queue.name in seen_queues:
                yield (
                    ("clusters", ci, "queues", qi, "name"),
                    (f"duplicate queue name {queue.name!r}: the queue label must identify one queue"),
                )
            seen_queues.add(queue.name)
        groups: list[tuple[tuple[Any, ...], str, Sequence[TargetConfig]]] = [
            (("clusters", ci, "targets"), cluster.tier, cluster.targets)
        ]
        if cluster.sentinel is not None:
            groups.append((("clusters", ci, "sentinel", "targets"), "sentinel", cluster.sentinel.targets))
        for prefix, tier, targets in groups:
            for ti, target in enumerate(targets):
                where = seen_targets.get(target.name)
                if where is not None:
                    yield (
                        (*prefix, ti, "name"),
                        (
                            f"duplicate target name {target.name!r} (also in cluster {where!r}); "
                            "target names must be unique across the file"
                        ),
                    )
                seen_targets[target.name] = cluster.name
                problem = _url_problem(target.url, URL_SCHEMES[tier])
                if problem:
                    yield (*prefix, ti, "url"), problem
                if tier != TARGET_KEY_TIER["stats_socket"] and (target.stats_socket or target.stats_url):
                    yield (
                        (*prefix, ti, "stats_socket"),
                        f"stats_socket/stats_url are only valid on {TARGET_KEY_TIER['stats_socket']} targets",
                    )
                if target.stats_url:
                    problem = _url_problem(target.stats_url, ("http", "https"))
                    if problem:
                        yield (*prefix, ti, "stats_url"), problem
                if tier not in HTTP_TIERS and (target.expect_status or target.expect_body):
                    yield (
                        (*prefix, ti, "expect_status"),
                        ("expect_status/expect_body are only valid on HTTP targets"),
                    )


def _patroni_problems(
    cluster: ClusterConfig, prefix: tuple[Any, ...]
) -> Iterable[tuple[tuple[Any, ...], str]]:
    """Each member names one of the cluster's targets, once, with an http(s) REST API URL."""
    names = {t.name for t in cluster.targets}
    seen: set[str] = set()
    for mi, member in enumerate(cluster.patroni.members if cluster.patroni else []):
        if member.target not in names:
            yield (*prefix, "members", mi, "target"), f"names no target of cluster {cluster.name!r}"
        elif member.target in seen:
            yield (*prefix, "members", mi, "target"), f"target {member.target!r} has two Patroni members"
        seen.add(member.target)
        problem = _url_problem(member.url, ("http", "https"))
        if problem:
            yield (*prefix, "members", mi, "url"), problem


def _misplaced_cluster_key(cluster: ClusterConfig, key: str) -> str | None:
    """The problem of a cluster setting ``key`` (vip, sentinel, queues, top_tables, ...) that the tier
    catalogue allows only on another tier's clusters (a key left at its default is not set)."""
    owner = CLUSTER_KEY_TIER[key]
    value = getattr(cluster, key)
    if value is None or value == [] or cluster.tier == owner or key not in cluster.model_fields_set:
        return None
    verb = "are" if key.endswith("s") else "is"
    return f"{key} {verb} only valid on a cluster of tier {owner}"


def _recovery_problems(config: TierwatchConfig) -> Iterable[tuple[tuple[Any, ...], str]]:
    recovery = config.recovery
    if recovery is None:
        return
    auth = recovery.auth
    if (auth.bearer_token_file is None) == (auth.basic is None):
        yield ("recovery", "auth"), "expected exactly one of bearer_token_file or basic"
    clusters = {c.name: c for c in config.clusters}
    targets = {t.name for c in config.clusters for t in c.targets}
    for name, settings in recovery.clusters.items():
        if name not in clusters:
            yield ("recovery", "clusters", name), f"no cluster named{_quoted_key(name)} in clusters"
            continue
        for key in ("restart_commands", "systemd_units"):
            for target in getattr(settings, key):
                if target not in targets:
                    yield ("recovery", "clusters", name, key, target), f"no target named{_quoted_key(target)}"
        for target, argv in settings.restart_commands.items():
            if not argv:
                yield ("recovery", "clusters", name, "restart_commands", target), "expected a non-empty list"


_PASSWORD_PARAMETERS = frozenset({"password", "sslpassword"})


def target_url_problem(tier: str, url: str) -> str | None:
    """What is wrong with a target's ``url`` for ``tier`` (scheme, password, host, port), by the rules
    of the static targets; used on discovered targets. Never repeats the URL."""
    return _url_problem(url, URL_SCHEMES[tier])


def _url_problem(url: str, schemes: tuple[str, ...]) -> str | None:
    """Describe what is wrong with ``url`` without ever repeating it (it may hold a secret)."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return f"expected a URL with scheme {' or '.join(schemes)} and a valid port"
    if parts.scheme not in schemes:
        return f"expected a URL with scheme {' or '.join(s + '://' for s in schemes)}"
    if parts.password:
        return "URL must not contain a password: use the cluster's password_file or password_env"
    for key, _ in parse_qsl(parts.query, keep_blank_values=True):
        if key.lower() in _PASSWORD_PARAMETERS:  # libpq and redis-py both read ?password=
            return (
                f"URL must not contain a password (query parameter {key.lower()}): "
                "use the cluster's password_file or password_env"
            )
    if parts.scheme == "unix":
        return None if parts.path else "expected unix:///path/to/socket"
    if not parts.hostname:
        return "expected a URL with a host"
    if port is not None and not 0 < port < 65536:
        return "expected a port between 1 and 65535"
    return None


@dataclass(frozen=True)
class _SecretRef:
    """A secret the config names: its key in LoadedConfig.secrets, its key path, and where it is."""

    name: str
    loc: tuple[Any, ...]
    what: str = "password file"
    file: str | None = None
    env: str | None = None
    base64: bool = False  # the secret must be base64 text (a TSIG key)

    def read(self) -> Secret:
        if self.file is not None:
            secret = read_secret_file(self.file, self.what)
        else:
            assert self.env is not None
            secret = read_secret_env(self.env)
        if self.base64:
            try:
                binascii.a2b_base64(secret.reveal().strip().encode("ascii"), strict_mode=True)
            except (binascii.Error, UnicodeEncodeError, ValueError):
                raise SecretError(f"{self.what} {self.file} does not hold base64 text") from None
        return secret


def _secret_refs(config: TierwatchConfig) -> Iterator[_SecretRef]:
    """Every secret the config names, cluster passwords then the recovery section's."""
    for index, cluster in enumerate(config.clusters):
        name = f"clusters.{cluster.name}.password"
        if cluster.password_file:
            yield _SecretRef(name, ("clusters", index, "password_file"), file=cluster.password_file)
        elif cluster.password_env:
            yield _SecretRef(name, ("clusters", index, "password_env"), env=cluster.password_env)
    if config.service_discovery is not None:
        key = config.service_discovery.key
        loc: tuple[Any, ...] = ("service_discovery", "key", "secret_file")
        yield _SecretRef("service_discovery.key", loc, "TSIG key file", file=key.secret_file, base64=True)
    recovery = config.recovery
    if recovery is None:
        return
    auth = recovery.auth
    if auth.bearer_token_file:
        loc = ("recovery", "auth", "bearer_token_file")
        yield _SecretRef("recovery.auth", loc, "bearer token file", file=auth.bearer_token_file)
    elif auth.basic is not None:
        loc = ("recovery", "auth", "basic", "password_file")
        yield _SecretRef("recovery.auth", loc, file=auth.basic.password_file)
    for cluster_name, settings in recovery.clusters.items():
        if settings.admin_password_file:
            yield _SecretRef(
                f"recovery.clusters.{cluster_name}.admin_password",
                ("recovery", "clusters", cluster_name, "admin_password_file"),
                "admin password file",
                file=settings.admin_password_file,
            )


class _Locator:
    """Maps a pydantic location to ``file:line: key.path`` using the YAML node tree."""

    def __init__(self, file: Path, root: yaml.Node | None, raw: Any):
        self.file = file
        self.root = root
        self.raw = raw

    def problem(self, loc: Sequence[Any], message: str, line: int | None = None) -> str:
        line = line or self._line(loc)
        where = f"{self.file}:{line}" if line else str(self.file)
        return f"{where}: {self._path(loc) or '(top level)'}: {message}"

    def _path(self, loc: Sequence[Any]) -> str:
        out = ""
        value: Any = self.raw
        for part in loc:
            if isinstance(part, int):
                out += f"[{part}]"
                value = value[part] if isinstance(value, list) and part < len(value) else None
                name = value.get("name") if isinstance(value, dict) else None
                if isinstance(name, str) and re.fullmatch(NAME_PATTERN, name):  # never an invalid name
                    out += f"({name})"
            else:
                if not isinstance(part, str) or part.startswith(("function-", "list[", "nullable")):
                    continue
                shown = part if re.fullmatch(NAME_PATTERN, part) else "<key>"
                out += f".{shown}" if out else shown
                value = value.get(part) if isinstance(value, dict) else None
        return out

    def _line(self, loc: Sequence[Any]) -> int | None:
        node = self.root
        line = node.start_mark.line + 1 if node is not None else None
        for part in loc:
            if isinstance(node, yaml.MappingNode) and isinstance(part, str):
                for key, child in node.value:
                    if key.value == part:
                        node = child
                        line = key.start_mark.line + 1
                        break
                else:
                    return line
            elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
                node = node.value[part]
                line = node.start_mark.line + 1
            else:
                continue
        return line
